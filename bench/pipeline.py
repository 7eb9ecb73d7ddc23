#!/usr/bin/env python3
"""The cost of the /api/v1 pipeline (metering, authentication, limits, usage record), measured with wrk.

Starts the release handler on the embedded store in local auth mode, mints a dev token, creates one
document, then drives, interleaved in one run:
  baseline  GET /api/health                (no pipeline, no store)
  me        GET /api/v1/me                 (the whole pipeline; the handler reads plan and quota)
  document  GET /api/v1/documents/{id}     (the whole pipeline plus a document read)
and reports requests/s and latency percentiles, and each route's throughput as a ratio of the baseline
measured in the same round. Usage: python3 bench/pipeline.py [--binary PATH] [--rounds 3] [--seconds 10]
"""

import argparse
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url, deadline=30):
    end = time.time() + deadline
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"handler not ready at {url}")


def wrk(url, token, seconds, connections):
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", url]
    if token:
        cmd[1:1] = ["-H", f"Authorization: Bearer {token}"]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    lat = {}
    for pct in ("50%", "90%", "99%"):
        m = re.search(rf"^\s+{re.escape(pct)}\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        value, unit = float(m.group(1)), m.group(2)
        lat[pct] = value / 1000 if unit == "us" else value * 1000 if unit == "s" else value
    return rps, lat, int(non2xx.group(1)) if non2xx else 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "handler"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--connections", type=int, default=16)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk")
    binary = os.path.abspath(args.binary)
    work = tempfile.mkdtemp(prefix="meterline-pipeline-")
    env = dict(os.environ, METERLINE_LOG="warn", METERLINE_LOG_FORMAT="text")
    token = subprocess.run([binary, "dev-token", "--roles", "Documents.Read,Documents.Write", "--ttl", "1d"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip()
    admin = subprocess.run([binary, "dev-token", "--tenant", "0b500000-0000-0000-0000-0000000000ff", "--roles",
                            "Platform.Admin", "--app-id", "bench-ops", "--ttl", "1d"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip()
    port = free_port()
    server = subprocess.Popen([binary, "serve"], cwd=work, env=dict(env, METERLINE_PORT=str(port)),
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_ready(base + "/api/health/ready")
        # A plan that cannot throttle this load, so every measured request passes the whole pipeline with a 2xx.
        def call(method, path, token_, payload=None, content_type="application/json", extra=None):
            data = json.dumps(payload).encode() if payload is not None else None
            headers = {"Authorization": f"Bearer {token_}", "Content-Type": content_type, **(extra or {})}
            with urllib.request.urlopen(urllib.request.Request(base + path, data=data, method=method, headers=headers)) as r:
                return json.load(r)
        call("POST", "/api/v1/plans", admin, {"code": "unthrottled", "name": "Unthrottled", "requestsPerMinute": 1000000,
             "burst": 100000, "monthlyQuotaUnits": 1000000000, "overagePolicy": "allow", "currency": "EUR",
             "basePriceMicros": 0, "overageUnitPriceMicros": 0})
        tenant = [t for t in call("GET", "/api/v1/tenants", admin)["value"] if t["entraTenantId"] == "00000000-0000-0000-0000-00000000d0d0"][0]
        call("PATCH", f"/api/v1/tenants/{tenant['id']}", admin, {"plan": "unthrottled"}, "application/merge-patch+json", {"If-Match": "*"})
        body = json.dumps({"title": "Benchmark document", "docType": "regulation", "tags": ["bench"]}).encode()
        req = urllib.request.Request(base + "/api/v1/documents", data=body, method="POST",
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req) as r:
            doc_id = json.load(r)["id"]
        routes = [("baseline", base + "/api/health", None),
                  ("me", base + "/api/v1/me", token),
                  ("document", f"{base}/api/v1/documents/{doc_id}", token)]
        wrk(routes[0][1], None, 2, args.connections)  # warm-up
        results = {name: [] for name, _, _ in routes}
        for round_no in range(args.rounds):
            for name, url, tok in routes:
                rps, lat, errors = wrk(url, tok, args.seconds, args.connections)
                results[name].append((rps, lat, errors))
                print(f"round {round_no + 1} {name}: {rps:.0f} req/s p50 {lat['50%']:.2f} ms p99 {lat['99%']:.2f} ms"
                      f" non-2xx {errors}", file=sys.stderr)
        print(f"| route | req/s (min / median / max) | p50 ms (median) | p90 ms (median) | p99 ms (median) | "
              f"throughput / baseline (median of rounds) | non-2xx |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for name, _, _ in routes:
            runs = results[name]
            rps = sorted(r[0] for r in runs)
            ratio = statistics.median(r[0] / b[0] for r, b in zip(runs, results["baseline"]))
            med = lambda pct: statistics.median(r[1][pct] for r in runs)
            print(f"| {name} | {rps[0]:.0f} / {statistics.median(rps):.0f} / {rps[-1]:.0f} | {med('50%'):.2f} | "
                  f"{med('90%'):.2f} | {med('99%'):.2f} | {ratio:.2f} | {sum(r[2] for r in runs)} |")
        usage = subprocess.run(["python3", "-c", "import sqlite3,sys; c=sqlite3.connect(sys.argv[1]);"
                                " print(c.execute('select count(*) from usage_events').fetchone()[0])",
                                os.path.join(work, "data", "meterline.db")], capture_output=True, text=True).stdout.strip()
        print(f"\nusage events written during the run: {usage}")
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
