#!/usr/bin/env python3
"""The search window (docs/api-design.md, "Search") at the SQL level: the SQLite store's search statements on one
tenant of 100 000 documents, before (every match ranked and faceted) and after (the newest `window` matches).

Seeds a fresh SQLite file with the store's schema (the migration files) and bench/paging.py's corpus, written as the
store writes a document (the row, its tags, its search keys row and FTS5 row, in creation order, UUIDv7 ids), without
the API: seeding 100 000 documents through it takes minutes. Then, with Python's sqlite3 on one connection (no HTTP),
for a common word, a phrase, a prefix with an exclusion and a selective word: the relevance page (26 rows) and the
three facets (docType, jurisdiction, tags) as the store ran them before the window, and as it runs them now for
each window size: the first page (one walk that ranks the newest matches, then the page's documents by key), a
next page (the window's rowid range ranked), the facets inside the window, and in another order than relevance
the walk that takes the facets' own window plus the facets. The statements are copied
from store/sqlite/documents.rs; keep them in step. A statement still running after 60 s is stopped (`> 60000`).

Usage: python3 bench/search_window.py [--documents 100000] [--windows 1000,2000,5000] [--db PATH] [--keep]
"""

import argparse
import glob
import os
import random
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from paging import make_document  # noqa: E402  (same directory)

TENANT = "01900000-0000-7000-8000-000000000001"
STOP_AFTER_S = 60


def seed(path, documents):
    db = sqlite3.connect(path)
    for migration in sorted(glob.glob(os.path.join(HERE, "..", "handler", "migrations", "sqlite", "*.sql"))):
        db.executescript(open(migration).read())
    rng = random.Random(1)
    start_ms = 1_760_000_000_000
    db.execute("BEGIN")
    for i in range(documents):
        d = make_document(rng, i)
        ms = start_ms + i * 10
        rand = rng.getrandbits(74)
        v7 = (ms << 80) | (0x7 << 76) | ((rand >> 62) << 64) | (0b10 << 62) | (rand & ((1 << 62) - 1))
        doc_id = str(uuid.UUID(int=v7))
        at = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ms / 1000)) + ".%06dZ" % ((ms % 1000) * 1000)
        db.execute(
            "INSERT INTO documents (id, tenant_id, title, summary, body, doc_type, jurisdiction, status, effective_date, "
            "created_by, updated_by, created_at, updated_at, version) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,1)",
            (doc_id, TENANT, d["title"], d["summary"], d["body"], d["docType"], d.get("jurisdiction"), "published",
             d.get("effectiveDate"), "seed", "seed", at, at))
        tags = sorted(set(d["tags"]))
        for tag in tags:
            db.execute("INSERT INTO document_tags (document_id, tenant_id, tag) VALUES (?,?,?)", (doc_id, TENANT, tag))
        db.execute("INSERT INTO document_search_keys (document_id, tenant_id) VALUES (?,?)", (doc_id, TENANT))
        rowid = db.execute("SELECT last_insert_rowid()").fetchone()[0]
        db.execute("INSERT INTO document_search (rowid, title, summary, body, tags) VALUES (?,?,?,?,?)",
                   (rowid, d["title"], d["summary"], d["body"], " ".join(tags)))
    db.commit()
    db.execute("PRAGMA journal_mode=WAL")
    db.close()


def matching(window=""):
    return ("FROM document_search s JOIN document_search_keys k ON k.search_rowid = s.rowid "
            f"JOIN documents d ON d.id = k.document_id WHERE document_search MATCH ?2{window} AND k.tenant_id = ?1 "
            "AND d.tenant_id = ?1 AND d.deleted_at IS NULL")


RANK = "CAST(bm25(document_search, 10.0, 4.0, 1.0, 3.0) * 1000000 AS INTEGER)"
COLUMNS = ("d.id, d.tenant_id, d.title, d.summary, d.body, d.doc_type, d.jurisdiction, d.status, d.effective_date, "
           "d.created_by, d.updated_by, d.created_at, d.updated_at, d.version")
# The window alone (facets in another order than relevance take theirs so).
WALK = f"SELECT min(rowid), max(rowid), count(*) FROM (SELECT s.rowid {matching()} ORDER BY s.rowid DESC LIMIT ?3)"
# A relevance search's first page: one walk ranks the newest matches; the page's documents are then read by key.
RANKED_WALK = f"SELECT s.rowid, d.id, {RANK} {matching()} ORDER BY s.rowid DESC LIMIT ?3"
READ = f"SELECT {COLUMNS} FROM documents d WHERE d.tenant_id = ?1 AND d.id IN ({{}})"


def page(window):
    return f"SELECT {COLUMNS}, {RANK} {matching(window)} ORDER BY {RANK} ASC, d.id ASC LIMIT 26"


def facets(window, before=False):
    if before:  # the tags facet before the window: `IN (matches)` ran the search once per document of the tenant
        tags = (f"SELECT t.tag, count(*) FROM document_tags t WHERE t.document_id IN (SELECT d.id {matching()}) "
                "GROUP BY t.tag ORDER BY 2 DESC, 1 LIMIT 20")
    else:
        tags = (f"SELECT t.tag, count(*) FROM (SELECT d.id {matching(window)}) m CROSS JOIN document_tags t "
                "ON t.document_id = m.id GROUP BY t.tag ORDER BY 2 DESC, 1 LIMIT 20")
    return [f"SELECT d.{c}, count(*) {matching(window)} AND d.{c} IS NOT NULL GROUP BY d.{c} ORDER BY 2 DESC, 1 LIMIT 20"
            for c in ("doc_type", "jurisdiction")] + [tags]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--documents", type=int, default=100_000)
    parser.add_argument("--windows", default="1000,2000,5000")
    parser.add_argument("--db", help="use this seeded file (made by an earlier --keep run) instead of seeding")
    parser.add_argument("--keep", action="store_true")
    args = parser.parse_args()
    path = args.db
    if not path:
        path = os.path.join(tempfile.mkdtemp(prefix="meterline-window-"), "search.db")
        started = time.perf_counter()
        seed(path, args.documents)
        print(f"seeded {args.documents} documents in {time.perf_counter() - started:.0f} s: {path}", file=sys.stderr)
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def p50(sql, params, runs):
        times, rows = [], None
        for _ in range(runs):
            start = time.perf_counter()
            db.set_progress_handler(lambda: 1 if time.perf_counter() - start > STOP_AFTER_S else 0, 10_000)
            try:
                rows = db.execute(sql, params).fetchall()
            except sqlite3.OperationalError:
                return None, None
            finally:
                db.set_progress_handler(None, 0)
            times.append((time.perf_counter() - start) * 1000)
            if times[-1] > 2000:
                break
        return statistics.median(times), rows

    def summed(statements, expression, runs):
        total = 0.0
        for sql in statements:
            ms, _ = p50(sql, (TENANT, expression), runs)
            if ms is None:
                return None
            total += ms
        return total

    def ms(value):
        return f"{value:.2f}" if value is not None else f"> {STOP_AFTER_S * 1000}"

    def first_page(expression, size, runs):
        """The first page as the store now reads it: the ranked walk, the window and the page in Python, the read."""
        times, window = [], ""
        for _ in range(runs):
            start = time.perf_counter()
            matches = db.execute(RANKED_WALK, (TENANT, expression, size + 1)).fetchall()
            window = ""
            if len(matches) > size:
                window = f" AND s.rowid > {matches[-1][0]} AND s.rowid <= {matches[0][0]}"
                matches.pop()
            best = sorted(matches, key=lambda m: (m[2], m[1]))[:26]
            db.execute(READ.format(", ".join("?" * len(best))), [TENANT] + [m[1] for m in best]).fetchall()
            times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times), window

    searches = [("common word `regulation`", '("regulation")'), ('phrase `"annual act"`', '("annual act")'),
                ("prefix + exclusion `regul* -customs`", '("regul" *) NOT "customs"'),
                ("selective word `97339`", '("97339")')]
    print("| search | matches | window | relevance, first page: before | after | next page: after "
          "| 3 facets: before | after, relevance order | after, another order (walk + facets) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name, expression in searches:
        matches = db.execute(f"SELECT count(*) {matching()}", (TENANT, expression)).fetchone()[0]
        before, _ = p50(page(""), (TENANT, expression), 11)
        facets_before = summed(facets("", before=True), expression, 3)
        for size in [int(w) for w in args.windows.split(",")]:
            first, window = first_page(expression, size, 21)
            walk, _ = p50(WALK, (TENANT, expression, size + 1), 21)
            # The next page ranks the window (or every match, without one) from the rowid range in its cursor.
            following, _ = p50(page(window), (TENANT, expression), 21)
            facets_after = summed(facets(window), expression, 11)
            print(f"| {name} | {matches} | {size if window else f'none ({size})'} | {ms(before)} | {first:.2f} | "
                  f"{following:.2f} | {ms(facets_before)} | {facets_after:.2f} | "
                  f"{walk + facets_after:.2f} ({walk:.2f} + {facets_after:.2f}) |", flush=True)
    db.close()
    if not args.keep and not args.db:
        os.remove(path)


if __name__ == "__main__":
    main()
