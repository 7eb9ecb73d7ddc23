#!/usr/bin/env python3
"""How long SQLite migration 17 (the search index rebuilt over the words folded in Rust) takes on a database of
--documents documents: seeds a file at migration 16 (bench/search_window.py's corpus, written straight into SQLite,
with the migration history a handler would have left), then times `handler migrate`, process start included.

Usage: python3 bench/reindex_migration.py [--binary target/release/handler] [--documents 10000,100000]
"""

import argparse
import glob
import hashlib
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.join(HERE, "..")
sys.path.insert(0, HERE)
import search_window  # noqa: E402  (same directory)


def migrated_to_16(path, documents):
    files = [f for f in sorted(glob.glob(os.path.join(ROOT, "handler", "migrations", "sqlite", "*.sql")))
             if int(os.path.basename(f)[:4]) <= 16]
    search_window.glob.glob = lambda _pattern: files  # seed with the migrations up to 16 only
    search_window.seed(path, documents)
    listed = open(os.path.join(ROOT, "handler", "src", "store", "migrations.rs")).read().split("pub const MSSQL")[0]
    names = dict(re.findall(r'(\d+) => "\d+_\w+\.sql" "(\w+)"', listed))
    db = sqlite3.connect(path)
    db.execute("CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER NOT NULL PRIMARY KEY, name TEXT NOT NULL,"
               " checksum TEXT NOT NULL, applied_at TEXT NOT NULL) STRICT")
    for f in files:
        version = int(os.path.basename(f)[:4])
        db.execute("INSERT INTO schema_migrations VALUES (?,?,?,?)", (
            version, names[str(version)], hashlib.sha256(open(f, "rb").read()).hexdigest(), "2026-12-01T00:00:00.000000Z"))
    db.commit()
    db.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(ROOT, "target", "release", "handler"))
    parser.add_argument("--documents", default="10000,100000")
    args = parser.parse_args()
    for n in (int(x) for x in args.documents.split(",")):
        with tempfile.TemporaryDirectory() as work:
            path = os.path.join(work, "meterline.db")
            migrated_to_16(path, n)
            started = time.time()
            run = subprocess.run([os.path.abspath(args.binary), "migrate"], cwd=work, capture_output=True, text=True,
                                 env={**os.environ, "METERLINE_SQLITE_PATH": path})
            took = time.time() - started
            if run.returncode != 0 or "applied [17]" not in run.stdout:
                sys.exit(f"migrate failed ({run.returncode}): {run.stdout}{run.stderr}")
            print(f"{n} documents: migration 17 in {took:.2f} s (handler migrate, process start included)")


if __name__ == "__main__":
    main()
