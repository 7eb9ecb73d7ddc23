#!/usr/bin/env python3
"""Per-page cost of walking a large document listing to its end (keyset pagination).

Starts `handler serve` standalone on the embedded SQLite store in a fresh temp directory, seeds N
documents into one tenant through `POST /api/v1/documents` (several connections at once), then walks
whole listings page by page, following `nextLink` to the end, and times every page request (from
sending the request to having read the whole response). Each walk is repeated; for each one the
table shows the median latency of the first, middle and last 10 pages, their ratio, and p50/p99 over
all pages. With keyset pagination a page deep in the listing should cost what the first one costs.

Every walk is also checked: each document listed once, in the requested order, and as many as the
filter matches. The server is stopped with SIGTERM at the end, also on errors.

Standard library only. Usage:
    python3 bench/paging.py [--documents 10000] [--repeats 3] [--binary target/release/handler]
"""

import argparse
import concurrent.futures
import datetime
import http.client
import json
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

READY_TIMEOUT = 30.0  # seconds to wait for the server to answer /api/health/ready
PAGE_SIZE = 100  # the API's maximum `maxpagesize`
EDGE = 10  # pages in each of the "first", "middle" and "last" groups
FILTER_TAG = "topic-tax"  # carried by about a third of the documents (see make_document)

# (label, query without cursor, sort key for the order check, descending?, matches(document) or None)
WALKS = [
    ("`orderby=title asc`", f"maxpagesize={PAGE_SIZE}&orderby=title%20asc", "title", False, None),
    ("default order (`updatedAt desc`)", f"maxpagesize={PAGE_SIZE}", "updatedAt", True, None),
    ("`orderby=effectiveDate desc`", f"maxpagesize={PAGE_SIZE}&orderby=effectiveDate%20desc", "effectiveDate", True, None),
    (
        f"`tag={FILTER_TAG}&orderby=effectiveDate desc`",
        f"maxpagesize={PAGE_SIZE}&tag={FILTER_TAG}&orderby=effectiveDate%20desc",
        "effectiveDate",
        True,
        lambda doc: FILTER_TAG in doc["tags"],
    ),
]

ADJECTIVES = "annual amended consolidated draft final general interim joint national quarterly regional revised special standard technical temporary uniform".split()
NOUNS = "act audit circular code decision directive guideline memo notice order policy regulation report ruling standard statute".split()
SUBJECTS = "water air energy banking tax customs health privacy labour transport fisheries mining telecoms aviation".split()
TOPICS = ["topic-tax", "topic-health", "topic-energy"]
EXTRA_TAGS = [f"t{i:02d}" for i in range(40)]
DOC_TYPES = ["regulation", "directive", "guidance", "ruling", "memo"]
JURISDICTIONS = ["eu", "us", "us-ca", "uk", "de", "fr", None]


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_document(rng, i):
    """The i-th seeded document: varied titles (1% share one title, to exercise the id tie-breaker),
    one of three topic tags plus up to three others, dates over 27 years (5% without a date)."""
    if rng.random() < 0.01:
        title = "Untitled memo"
    else:
        title = f"{rng.choice(ADJECTIVES).capitalize()} {rng.choice(NOUNS)} on {rng.choice(SUBJECTS)} no. {rng.randrange(100000)}"
    tags = [TOPICS[i % len(TOPICS)]] + rng.sample(EXTRA_TAGS, rng.randrange(4))
    doc = {
        "title": title,
        "summary": f"Summary of {title.lower()}: " + " ".join(rng.choice(SUBJECTS) for _ in range(10)),
        "body": " ".join(rng.choice(NOUNS + SUBJECTS + ADJECTIVES) for _ in range(80)),
        "docType": rng.choice(DOC_TYPES),
        "status": "published",
        "tags": tags,
    }
    jurisdiction = rng.choice(JURISDICTIONS)
    if jurisdiction:
        doc["jurisdiction"] = jurisdiction
    if rng.random() >= 0.05:
        day = datetime.date(2000, 1, 1) + datetime.timedelta(days=rng.randrange(27 * 365))
        doc["effectiveDate"] = day.isoformat()
    return doc


def compactions(log_path):
    """How many times the store has merged its search index so far (`store::sqlite::search_upkeep`'s log line,
    logged at info when METERLINE_LOG enables it)."""
    with open(log_path, encoding="utf-8", errors="replace") as f:
        return f.read().count("search index compacted")


def wait_for_compaction(log_path, timeout=30.0, before=None):
    """Waits for a compaction of the search index past the `before`-th (default: the ones so far): the store merges
    the index 5 s after its last document write, in paced steps. Says how long that took. A build without the
    upkeep never logs one: the run goes on after `timeout` with the index as the writes left it."""
    before = compactions(log_path) if before is None else before
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if compactions(log_path) > before:
            return f"done, waited {time.monotonic() - start:.1f} s"
        time.sleep(0.2)
    return f"none within {timeout:.0f} s"


class Server:
    """`handler serve` in `workdir`; stop() sends SIGTERM (SIGKILL after 15 s). `host_mode`: started as the
    Functions host starts it, so it also answers the host's invocations (`POST /{FunctionName}`), which a
    standalone server refuses with 404."""

    def __init__(self, binary, workdir, host_mode=False):
        self.port = free_port()
        env = dict(os.environ)
        env.update(METERLINE_PORT=str(self.port), METERLINE_LOG_FORMAT="text")
        env.setdefault("METERLINE_LOG", "warn")
        if host_mode:
            worker = "bench-worker"
            env.update(FUNCTIONS_CUSTOMHANDLER_PORT=str(self.port), FUNCTIONS_CUSTOMHANDLER_WORKER_ID=worker,
                       FUNCTIONS_APP_ROOT_PATH=workdir, FUNCTIONS_WORKER_RUNTIME="custom")
        self.log_path = os.path.join(workdir, "handler.log")
        with open(self.log_path, "ab") as log:  # a file, not a pipe: an unread pipe could stall the server
            self.proc = subprocess.Popen([binary, "serve"], cwd=workdir, env=env, stdout=log, stderr=log)

    def wait_ready(self):
        start = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"handler exited with {self.proc.returncode}; see {self.log_path}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/api/health/ready")
                resp = conn.getresponse()
                resp.read()
                conn.close()
                if resp.status == 200:
                    return
            except OSError:
                pass
            if time.monotonic() - start > READY_TIMEOUT:
                raise RuntimeError(f"not ready within {READY_TIMEOUT} s; see {self.log_path}")
            time.sleep(0.01)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def seed(port, token, documents, connections):
    """Creates `documents` through the API on `connections` keep-alive connections; returns the
    created documents (as the API answered them) and the elapsed seconds."""
    rng = random.Random(20260514)
    bodies = [json.dumps(make_document(rng, i)) for i in range(documents)]
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    created = [None] * documents
    next_index = iter(range(documents))
    lock = threading.Lock()

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                for attempt in range(5):
                    conn.request("POST", "/api/v1/documents", body=bodies[i], headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                    if resp.status == 429 and attempt < 4:
                        time.sleep(float(resp.getheader("Retry-After", "1")))
                        continue
                    if resp.status != 201:
                        raise RuntimeError(f"POST document {i}: {resp.status} {data[:500]!r}")
                    break
                created[i] = json.loads(data)
        finally:
            conn.close()

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(connections) as pool:
        for future in [pool.submit(worker) for _ in range(connections)]:
            future.result()
    return created, time.perf_counter() - start


def sort_key(doc, key):
    value = doc[key]
    if key == "updatedAt":
        value = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    elif key == "effectiveDate" and value is None:
        value = ""  # no date sorts as the earliest
    return (value, doc["id"])


def walk(port, token, query, key, descending, expected_ids):
    """One walk from the first page to the last; returns per-page latencies (ms) and bytes read."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    headers = {"Authorization": f"Bearer {token}"}
    path = f"/api/v1/documents?{query}"
    latencies, total_bytes, seen, previous = [], 0, set(), None
    try:
        while path:
            start = time.perf_counter()
            conn.request("GET", path, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            latencies.append((time.perf_counter() - start) * 1000)
            if resp.status != 200:
                raise RuntimeError(f"GET {path}: {resp.status} {data[:500]!r}")
            total_bytes += len(data)
            page = json.loads(data)
            for doc in page["value"]:
                if doc["id"] in seen:
                    raise RuntimeError(f"{query}: document {doc['id']} listed twice")
                seen.add(doc["id"])
                k = sort_key(doc, key)
                if previous is not None and ((k >= previous) if descending else (k <= previous)):
                    raise RuntimeError(f"{query}: {k} follows {previous}, out of order")
                previous = k
            next_link = page.get("nextLink")
            if next_link:
                # A path under /api/v1 (possibly a full URL): keep its path and query only.
                parts = urllib.parse.urlsplit(next_link)
                path = parts.path + ("?" + parts.query if parts.query else "")
            else:
                path = None
    finally:
        conn.close()
    if seen != expected_ids:
        raise RuntimeError(f"{query}: listed {len(seen)} documents, expected {len(expected_ids)}")
    return latencies, total_bytes


def percentile(samples, p):
    """Nearest-rank percentile."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * p // 100))
    return ordered[int(rank) - 1]


def summarize(latencies):
    n = len(latencies)
    middle = max(0, n // 2 - EDGE // 2)
    first = statistics.median(latencies[:EDGE])
    mid = statistics.median(latencies[middle : middle + EDGE])
    last = statistics.median(latencies[-EDGE:])
    return {
        "first": first,
        "middle": mid,
        "last": last,
        "ratio": last / first,
        "p50": statistics.median(latencies),
        "p99": percentile(latencies, 99),
        "max": max(latencies),
    }


def cell(values, fmt):
    values = sorted(values)
    med = statistics.median(values)
    return f"{med:{fmt}} ({values[0]:{fmt}}–{values[-1]:{fmt}})"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--documents", type=int, default=10000, help="documents to seed (default 10000)")
    parser.add_argument("--repeats", type=int, default=3, help="walks of each listing (default 3)")
    parser.add_argument("--connections", type=int, default=8, help="concurrent seeding connections (default 8)")
    parser.add_argument("--binary", help="handler executable (default: target/release/handler in the repository)")
    parser.add_argument("--keep", action="store_true", help="keep the temp directory (database, log) for inspection")
    args = parser.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    binary = os.path.abspath(args.binary or os.path.join(repo, "target", "release", "handler"))
    if not os.access(binary, os.X_OK):
        sys.exit(f"{binary}: not an executable; build it with `cargo build --release -p handler`")

    workdir = tempfile.mkdtemp(prefix="meterline-paging-")
    server = None
    try:
        env = dict(os.environ, METERLINE_LOG="warn", METERLINE_LOG_FORMAT="text")
        token = subprocess.run(
            [binary, "dev-token", "--roles", "Documents.Read,Documents.Write", "--ttl", "24h"],
            cwd=workdir, env=env, check=True, capture_output=True, text=True,
        ).stdout.strip()
        server = Server(binary, workdir)
        server.wait_ready()

        created, seconds = seed(server.port, token, args.documents, args.connections)
        print(
            f"seeded {len(created)} documents in {seconds:.1f} s ({len(created) / seconds:.0f} documents/s, "
            f"{args.connections} connections)",
            file=sys.stderr,
        )

        rows = []
        for label, query, key, descending, matches in WALKS:
            expected = {d["id"] for d in created if matches is None or matches(d)}
            runs = []
            for r in range(args.repeats):
                latencies, total_bytes = walk(server.port, token, query, key, descending, expected)
                s = summarize(latencies)
                runs.append(s)
                print(
                    f"{label} run {r + 1}/{args.repeats}: {len(latencies)} pages, {len(expected)} documents, "
                    f"{total_bytes / len(latencies) / 1000:.0f} kB/page; first {s['first']:.2f} ms, "
                    f"middle {s['middle']:.2f} ms, last {s['last']:.2f} ms, p50 {s['p50']:.2f} ms, "
                    f"p99 {s['p99']:.2f} ms, max {s['max']:.2f} ms",
                    file=sys.stderr,
                )
            rows.append((label, len(latencies), len(expected), runs))
    finally:
        if server is not None:
            server.stop()
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    print(
        f"Seeding: {len(created)} documents in {seconds:.1f} s, {len(created) / seconds:.0f} documents/s "
        f"over {args.connections} connections.\n"
    )
    print(
        f"Page latency in ms, {PAGE_SIZE} documents a page; each cell is the median of {args.repeats} walks "
        "(min–max). First/middle/last: median of that group of 10 pages.\n"
    )
    print("| listing | documents | pages | first 10 | middle 10 | last 10 | last / first | p50 | p99 |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for label, pages, documents, runs in rows:
        cells = [cell([s[m] for s in runs], ".2f") for m in ("first", "middle", "last", "ratio", "p50", "p99")]
        print(f"| {label} | {documents} | {pages} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
