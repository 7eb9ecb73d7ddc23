#!/usr/bin/env python3
"""Pages a usage batch's commit writes to SQLite's WAL, by b-tree (the table, each index, the AUTOINCREMENT
counter, the database header).

A usage record's group commit is a quarter of a metered GET's CPU (BENCHMARKS.md, "Where a metered GET's CPU goes"),
and a WAL commit writes every page it changed (a frame header and the 4 KiB page, two `pwrite`s), which the
checkpointer later copies into the database. This script builds a fresh SQLite file from the store's migrations,
writes `--seed` batches of usage events first (so the b-trees have the depth of a used store), then `--batches`
more as the recorder writes them (`--size` events a transaction, the statement of `store/sqlite/metering.rs`,
time-ordered ids, one or more tenants, with or without a quota lease), and reads the WAL's frame headers to count
the pages each commit wrote, attributed with `dbstat`. Python's sqlite3 (the system SQLite) writes the same b-tree
pages as the handler's bundled one; the figures are pages, not times.

Usage: python3 bench/usage_pages.py [--seed 20000] [--batches 300] [--size 4] [--seed-tenants 2]
"""

import argparse
import collections
import glob
import os
import random
import sqlite3
import struct
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
TENANTS = ["01900000-0000-7000-8000-000000000001", "01900000-0000-7000-8000-000000000002"]
PAGE = 4096
FRAME_HEADER = 24
WAL_HEADER = 32

INSERT = (
    "INSERT INTO usage_events (event_id, request_id, tenant_id, client_id, principal_id, operation_id, method, "
    "route_template, status, units, billable, overage_units, latency_micros, request_bytes, response_bytes, "
    "occurred_at, recorded_at, lease_id, refusal) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) "
    "ON CONFLICT (event_id) DO NOTHING"
)


class Writer:
    def __init__(self, path):
        self.db = sqlite3.connect(path, isolation_level=None)
        for migration in sorted(glob.glob(os.path.join(HERE, "..", "handler", "migrations", "sqlite", "*.sql"))):
            self.db.executescript(open(migration).read())
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "wal_autocheckpoint=0", "foreign_keys=OFF"):
            self.db.execute(f"PRAGMA {pragma}")
        self.rng = random.Random(1)
        self.ms = 1_760_000_000_000
        self.lease = self.v7()

    def v7(self):
        rand = self.rng.getrandbits(74)
        v7 = (self.ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
        return str(uuid.UUID(int=v7))

    def batch(self, size, tenants, leased):
        self.db.execute("BEGIN IMMEDIATE")
        for i in range(size):
            self.ms += 1
            at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(self.ms / 1000)) + ".%06dZ" % (self.ms % 1000 * 1000)
            self.db.execute(INSERT, (
                self.v7(), "req-" + self.v7(), tenants[i % len(tenants)], "bench-client", "sub:bench", "getMe", "GET",
                "/api/v1/me", 200, 0, 0, 0, 350, 0, 420, at, at, self.lease if leased else None, None))
        self.db.execute("COMMIT")

    def pages_per_commit(self, wal_path, batches, size, tenants, leased):
        self.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        for _ in range(batches):
            self.batch(size, tenants, leased)
        names = {page: name for name, page in self.db.execute("SELECT name, pageno FROM dbstat")}
        names[1] = "database header (page 1)"
        data = open(wal_path, "rb").read()
        counts, commits, offset = collections.Counter(), 0, WAL_HEADER
        while offset + FRAME_HEADER <= len(data):
            page, commit = struct.unpack(">II", data[offset:offset + 8])
            counts[names.get(page, "other")] += 1
            commits += commit != 0
            offset += FRAME_HEADER + PAGE
        return {name: n / commits for name, n in counts.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=20_000, help="batches written before measuring")
    parser.add_argument("--batches", type=int, default=300, help="batches measured per case")
    parser.add_argument("--size", type=int, default=4, help="events per batch (bench/load.py prints the mean)")
    parser.add_argument("--seed-tenants", type=int, choices=(1, 2), default=2,
                        help="tenants of the seeded events (1: the measured tenant's index entries are the last)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="meterline-usage-pages-") as tmp:
        path = os.path.join(tmp, "usage.db")
        writer = Writer(path)
        for _ in range(args.seed):
            writer.batch(args.size, TENANTS[:args.seed_tenants], True)
        cases = [("1 tenant, no lease (getMe)", TENANTS[:1], False), ("1 tenant, leased", TENANTS[:1], True),
                 ("2 tenants, no lease", TENANTS, False), ("2 tenants, leased", TENANTS, True)]
        rows = [(label, writer.pages_per_commit(path + "-wal", args.batches, args.size, tenants, leased))
                for label, tenants, leased in cases]
        columns = sorted({name for _, pages in rows for name in pages})
        print(f"pages written per commit of {args.size} usage events, after {args.seed * args.size} events:\n")
        print("| case | " + " | ".join(f"`{c}`" for c in columns) + " | all |")
        print("|---|" + "---:|" * (len(columns) + 1))
        for label, pages in rows:
            cells = " | ".join(f"{pages.get(c, 0):.2f}" for c in columns)
            print(f"| {label} | {cells} | {sum(pages.values()):.2f} |")


if __name__ == "__main__":
    main()
