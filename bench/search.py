#!/usr/bin/env python3
"""Full-text search at 10 000 and 100 000 documents a tenant (issue 22), against the LIKE scan it replaced.

For each size: starts `handler serve` on a fresh SQLite file, seeds the documents through the API (bench/paging.py's
corpus: titles, summaries, bodies and tags from small vocabularies, so common words match nearly every document),
then, in one run:
- through the API with wrk (16 connections): a document GET, and searches from selective to common, in relevance
  order and with the listing's other orders and filters;
- at the SQL level, on the same file with Python's sqlite3 (one connection, no HTTP): the FTS5 query the store now
  runs for `q`, against the `LIKE '%word%'` scan over title and summary that `q` was before (kept here as the
  baseline only; the API no longer has it).

Usage: python3 bench/search.py [--binary target/release/handler] [--sizes 10000,100000] [--seconds 3]
"""

import argparse
import os
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
import urllib.parse

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from load import call, dev_token, unthrottle, wrk  # noqa: E402  (same directory)
from paging import Server, seed, wait_for_compaction  # noqa: E402

TENANT = "0b500000-0000-0000-0000-00000000000a"


def sql_p50(conn, sql, params, runs):
    """Median milliseconds of `runs` executions of a query (all rows fetched), and its row count."""
    times, rows = [], 0
    for _ in range(runs):
        start = time.perf_counter()
        rows = len(conn.execute(sql, params).fetchall())
        times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times), rows


LIKE = ("SELECT d.id FROM documents d WHERE d.tenant_id = ?1 AND d.deleted_at IS NULL "
        "AND (d.title LIKE ?2 ESCAPE '\\' OR d.summary LIKE ?2 ESCAPE '\\') ORDER BY d.updated_at DESC, d.id DESC LIMIT 26")
FTS = ("SELECT d.id FROM document_search s JOIN document_search_keys k ON k.search_rowid = s.rowid "
       "JOIN documents d ON d.id = k.document_id WHERE document_search MATCH ?2 AND k.tenant_id = ?1 "
       "AND d.tenant_id = ?1 AND d.deleted_at IS NULL "
       "ORDER BY CAST(bm25(document_search, 10.0, 4.0, 1.0, 3.0) * 1000000 AS INTEGER), d.id LIMIT 26")


def run_size(binary, size, seconds, connections):
    work = tempfile.mkdtemp(prefix="meterline-search-")
    # The store's search upkeep logs its compactions at info: the run waits for the one after the seeding.
    os.environ.update(METERLINE_LOG="warn,meterline::store::sqlite::search_upkeep=info", METERLINE_LOG_FORMAT="text")
    admin = dev_token(binary, work, "--tenant", "0b500000-0000-0000-0000-0000000000ff", "--roles", "Platform.Admin",
                      "--app-id", "bench-ops")
    token = dev_token(binary, work, "--tenant", TENANT, "--roles", "Documents.Read,Documents.Write,Tenant.Admin")
    server = Server(binary, work)
    try:
        server.wait_ready()
        base = f"http://127.0.0.1:{server.port}"
        call(base, "GET", "/api/v1/me", token)  # the tenant exists from its first call
        tenant_id = unthrottle(base, admin, (TENANT,))[TENANT]
        docs, secs = seed(server.port, token, size, 8)
        print(f"seeded {size} documents in {secs:.1f} s ({size / secs:.0f}/s)", file=sys.stderr)
        print(f"index compaction after the seeding: {wait_for_compaction(server.log_path)}", file=sys.stderr)
        number = docs[len(docs) // 2]["title"].rsplit(" ", 1)[-1]
        phrase = " ".join(docs[len(docs) // 3]["title"].split()[:2])
        auth = f"Bearer {token}"
        searches = [
            ("document GET", f"/api/v1/documents/{docs[len(docs) // 2]['id']}"),
            ("selective word (a title's number)", f"/api/v1/documents?q={number}"),
            ("phrase", "/api/v1/documents?q=" + urllib.parse.quote(f'"{phrase}"')),
            ("prefix + exclusion", "/api/v1/documents?q=" + urllib.parse.quote("regul* -customs")),
            ("common word, relevance", "/api/v1/documents?q=regulation"),
            ("common word, tag, date order (bench/load.py's search)",
             "/api/v1/documents?q=regulation&tag=topic-tax&orderby=effectiveDate%20desc&maxpagesize=25"),
            ("common word with facets", "/api/v1/documents?q=regulation&facets=docType,jurisdiction,tags"),
        ]
        print(f"\n### {size} documents in the tenant\n")
        print("| request (through the API) | req/s | p50 ms | p99 ms | / document GET |")
        print("|---|---:|---:|---:|---:|")
        first = None
        for name, path in searches:
            r = wrk(base + path, seconds, connections, auth=auth, workdir=work)
            first = first or r["rps"]
            rps = f"{r['rps']:,.0f}".replace(",", " ")  # the thousands only: names have commas of their own
            print(f"| {name} | {rps} | {r['p50_us'] / 1000:.2f} | {r['p99_us'] / 1000:.2f} | {r['rps'] / first:.2f} |")
        db = sqlite3.connect(f"file:{os.path.join(work, 'data', 'meterline.db')}?mode=ro", uri=True)
        print("\n| query (SQL only, one connection) | FTS5 p50 ms | rows | `LIKE` scan p50 ms | rows | LIKE / FTS5 |")
        print("|---|---:|---:|---:|---:|---:|")
        for name, word in [("selective word", number), ("common word", "regulation")]:
            fts, fts_rows = sql_p50(db, FTS, (tenant_id, f'"{word}"'), 50)
            like, like_rows = sql_p50(db, LIKE, (tenant_id, f"%{word}%"), 10)
            print(f"| {name} (`{word}`) | {fts:.2f} | {fts_rows} | {like:.2f} | {like_rows} | {like / fts:.1f} |")
        db.close()
    finally:
        server.stop()
        shutil.rmtree(work, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(HERE, "..", "target", "release", "handler"))
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--seconds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    for size in (int(s) for s in args.sizes.split(",")):
        run_size(os.path.abspath(args.binary), size, args.seconds, args.connections)


if __name__ == "__main__":
    main()
