#!/usr/bin/env python3
"""Throughput and latency of the API under load, against a bare route measured in the same run.

Starts the release handler standalone on the embedded SQLite store (local auth), seeds two tenants on an
unthrottled plan (one of them calling through a registered API client) with --documents documents each
through the API, then drives each scenario with wrk (bench/wrk.lua) for --seconds, interleaved, --rounds
times:

  baseline  GET /api/health                    no auth, no metering, no store: the actix-web ceiling here
  me        GET /api/v1/me                     authentication, rate limit, usage record; no quota step (a
                                               self-service read since issue 20), no resource read
  document  GET /api/v1/documents/{id}         the whole pipeline and a document read
  search    GET /api/v1/documents?q=&tag=...   the whole pipeline and a filtered, sorted keyset page
  create    POST /api/v1/documents             the whole pipeline and a document write
  invoke    POST /Documents (default mode)     GET document wrapped in the host's JSON envelope

Per scenario: requests/s (min / median / max over rounds), p50/p99/p99.9 (median over rounds), the
ratio to the baseline of the same round (median), non-2xx responses. Also the binary size and the
handler's RSS idle (after seeding) and its peak under load (sampled from /proc every 100 ms).

Standard library only (plus wrk). Usage:
    python3 bench/load.py [--binary target/release/handler] [--rounds 3] [--seconds 5] [--documents 10000]
"""

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paging import Server, compactions, seed, wait_for_compaction  # noqa: E402  (same directory)

HERE = os.path.dirname(os.path.abspath(__file__))
TENANT_A = "00000000-0000-0000-0000-00000000a0a0"
TENANT_B = "00000000-0000-0000-0000-00000000b0b0"


def dev_token(binary, work, *args):
    return subprocess.run([binary, "dev-token", "--ttl", "1d", *args], cwd=work, capture_output=True, text=True,
                          check=True).stdout.strip()


def call(base, method, path, token, payload=None, content_type="application/json", extra=None):
    data = json.dumps(payload).encode() if payload is not None else None
    headers = {"Authorization": f"Bearer {token}", "Content-Type": content_type, **(extra or {})}
    with urllib.request.urlopen(urllib.request.Request(base + path, data=data, method=method, headers=headers)) as r:
        return json.load(r) if r.status != 204 else None


def unthrottle(base, admin, directories):
    """Creates a plan that cannot throttle a benchmark's load and moves the tenants of `directories` onto it, so
    every measured request passes the whole pipeline with a 2xx. Returns {directory: tenant id}."""
    call(base, "POST", "/api/v1/plans", admin, {
        "code": "unthrottled", "name": "Unthrottled", "requestsPerMinute": 1000000, "burst": 100000,
        "monthlyQuotaUnits": 1000000000, "overagePolicy": "allow", "currency": "EUR", "basePriceMicros": 0,
        "overageUnitPriceMicros": 0})
    ids = {}
    for tenant in call(base, "GET", "/api/v1/tenants", admin)["value"]:
        if tenant["entraTenantId"] in directories:
            ids[tenant["entraTenantId"]] = tenant["id"]
            call(base, "PATCH", f"/api/v1/tenants/{tenant['id']}", admin, {"plan": "unthrottled"},
                 "application/merge-patch+json", {"If-Match": "*"})
    return ids


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(re.search(r"^VmRSS:\s+(\d+) kB", f.read(), re.M).group(1))


class RssSampler:
    """The peak RSS of `pid` while active."""

    def __init__(self, pid):
        self.pid, self.peak, self.running = pid, 0, True
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        while self.running:
            self.peak = max(self.peak, rss_kib(self.pid))
            time.sleep(0.1)

    def stop(self):
        self.running = False
        self.thread.join()
        return self.peak


def wrk(url, seconds, connections, method="GET", body=None, auth=None, workdir=None):
    env = dict(os.environ, WRK_METHOD=method, WRK_AUTH=auth or "")
    if body is not None:
        path = os.path.join(workdir, "wrk-body.json")
        with open(path, "wb") as f:
            f.write(body)
        env["WRK_BODY_FILE"] = path
    out = subprocess.run(["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "-s", os.path.join(HERE, "wrk.lua"), url],
                         capture_output=True, text=True, check=True, env=env).stdout
    data = json.loads(re.search(r"^WRKJSON (.*)$", out, re.M).group(1))
    data["rps"] = data["requests"] / (data["duration_us"] / 1e6)
    return data


def loadgen(binary, url, rate, seconds, method="GET", body=None, auth=None, workdir=None):
    """Open-loop: `rate` requests/s for `seconds`, latency counted from when each was due (bench/loadgen)."""
    cmd = [binary, "--url", url, "--rate", str(rate), "--seconds", str(seconds), "--method", method]
    if auth:
        cmd += ["--header", f"Authorization: {auth}"]
    if body is not None:
        path = os.path.join(workdir, "loadgen-body.json")
        with open(path, "wb") as f:
            f.write(body)
        cmd += ["--body-file", path]
    return json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)


def half_load(args, scenarios, results, work):
    """p50/p99/p99.9 of the bare route and the pipeline at half the pipeline's peak (its median req/s in the
    closed-loop rounds), open-loop, interleaved, --rounds times; the pipeline's added p99 per round."""
    rate = round(statistics.median(r["rps"] for r in results["document"]) / 2)
    specs = dict((name, spec) for name, _, spec in scenarios)
    labels = dict((name, label) for name, label, _ in scenarios)
    names = [n for n in ("baseline", "me", "document") if n in specs]
    runs = {name: [] for name in names}
    for round_no in range(args.rounds):
        for name in names:
            r = loadgen(os.path.abspath(args.loadgen), rate=rate, seconds=args.seconds, workdir=work, **specs[name])
            runs[name].append(r)
            print(f"half load round {round_no + 1} {name}: {r['achieved_rate']:.0f} req/s p50 {r['p50_us'] / 1000:.2f} ms "
                  f"p99 {r['p99_us'] / 1000:.2f} ms p99.9 {r['p999_us'] / 1000:.2f} ms errors {r['errors']} "
                  f"send lag p99 {r['send_lag_p99_us']} us", file=sys.stderr)
    print(f"\nOpen loop at {rate} req/s, half the median peak of `GET /api/v1/documents/{{id}}` above "
          f"(bench/loadgen, {args.seconds} s per scenario after 1 s of warm-up, {args.rounds} rounds; latency from when "
          f"each request was due):\n")
    print("| scenario | p50 ms | p99 ms (min / median / max) | p99.9 ms | errors | generator send lag p99 ms |")
    print("|---|---:|---|---:|---:|---:|")
    med = lambda rs, key: statistics.median(r[key] for r in rs) / 1000  # noqa: E731
    for name in names:
        rs = runs[name]
        p99 = sorted(r["p99_us"] / 1000 for r in rs)
        print(f"| {labels[name]} | {med(rs, 'p50_us'):.2f} | {p99[0]:.2f} / {statistics.median(p99):.2f} / {p99[-1]:.2f} | "
              f"{med(rs, 'p999_us'):.2f} | {sum(r['errors'] for r in rs)} | {med(rs, 'send_lag_p99_us'):.2f} |")
    for name in names[1:]:
        added = sorted((r["p99_us"] - b["p99_us"]) / 1000 for r, b in zip(runs[name], runs["baseline"]))
        print(f"\nadded p99 of {labels[name]} over the bare route in the same round: min {added[0]:.2f} ms, "
              f"median {statistics.median(added):.2f} ms, max {added[-1]:.2f} ms", end="")
    print()


def profile(pid, spec, args, work):
    """Samples the handler's stacks with perf (cpu-clock: no hardware counters needed) while wrk drives one
    scenario, then prints where the time goes: by binary/kernel, by symbol, and as folded stacks for a flame graph."""
    data = os.path.join(work, "perf.data")
    # Frame pointers miss most of Rust's frames (the release build has none); DWARF unwinding sees them all,
    # at a larger perf.data and a slower report, so it samples at half the rate.
    graph = ["-F", "499", "--call-graph", "dwarf,32768"] if args.dwarf else ["-F", "999", "-g"]
    perf = subprocess.Popen(["perf", "record", "-e", "cpu-clock", *graph, "-p", str(pid), "-o", data],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(0.5)
    r = wrk(seconds=args.seconds, connections=args.connections, workdir=work, **spec)
    perf.send_signal(2)
    perf.wait()
    print(f"{r['rps']:.0f} req/s while profiling (perf costs some of it)\n")
    for title, sort in (("by thread (actix workers, the SQLite writer and checkpointer, tokio's blocking pool)", "comm"),
                        ("by binary (kernel, handler, libc ...)", "dso"), ("by symbol", "dso,sym")):
        out = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", sort, "--stdio", "-g", "none",
                              "--percent-limit", "1.5"], capture_output=True, text=True).stdout
        rows = [line for line in out.splitlines() if line.strip() and not line.startswith("#")]
        print(f"{title}:\n```\n" + "\n".join(rows[:25]) + "\n```\n")
    # Under the repository's target/, never into whatever directory the command was run from.
    out_dir = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "target", "bench")
    os.makedirs(out_dir, exist_ok=True)
    folded = os.path.normpath(os.path.join(out_dir, f"perf-{args.profile}.folded"))
    script = subprocess.run(["perf", "script", "--no-inline", "-i", data], capture_output=True, text=True).stdout
    stacks = {}
    for block in script.split("\n\n"):
        frames = [line.split()[1].split("+")[0] for line in block.splitlines()[1:] if len(line.split()) > 1]
        if frames:
            key = ";".join(reversed(frames))
            stacks[key] = stacks.get(key, 0) + 1
    with open(folded, "w") as f:
        f.writelines(f"{k} {v}\n" for k, v in stacks.items())
    print(f"folded stacks (flamegraph.pl or speedscope.app read them): {folded}")


def cpu_seconds(pid):
    """CPU seconds (user + system, all threads) the process has used so far, from /proc/<pid>/stat."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def admission_transactions(log_path):
    """The handler's shutdown count of the store transactions its admissions took (with quota and rate leases),
    as store transactions per request; None when leases are off or the line is missing."""
    try:
        with open(log_path, encoding="utf-8", errors="replace") as log:
            lines = [line for line in log if "admission store transactions" in line]
    except OSError:
        return None
    if not lines:
        return None
    # The message, not the fields: a terminal log colours the field names.
    found = re.search(r"admission store transactions: (\d+) for (\d+) quota spends, (\d+) for (\d+) rate decisions",
                      lines[-1])
    if not found:
        return None
    quota_tx, quota_n, rate_tx, rate_n = (int(g) for g in found.groups())
    per = lambda tx, n: f"{tx / n:.4f}" if n else "n/a"  # noqa: E731
    said = (f"admission store transactions over the whole run: quota {quota_tx} for {quota_n} requests "
            f"({per(quota_tx, quota_n)} per request), rate {rate_tx} for {rate_n} requests "
            f"({per(rate_tx, rate_n)} per request)")
    # The other store write of a metered call: its usage record, group-committed with its neighbours'.
    usage = [re.search(r"usage record store transactions: (\d+) for (\d+) usage events", line) for line in lines_of(log_path)]
    usage = [u for u in usage if u]
    if usage:
        tx, n = (int(g) for g in usage[-1].groups())
        said += (f"\nusage record store transactions over the whole run: {tx} for {n} usage events "
                 f"({per(tx, n)} per request, {n / tx if tx else 0:.1f} events per commit)")
    return said


def lines_of(path):
    with open(path, encoding="utf-8", errors="replace") as log:
        return log.readlines()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--binary", default=os.path.join(HERE, "..", "target", "release", "handler"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--documents", type=int, default=10000, help="documents seeded per tenant")
    parser.add_argument("--loadgen", default=os.path.join(HERE, "..", "target", "release", "loadgen"),
                        help="the open-loop generator (bench/loadgen) for the half-load latencies; skipped if missing")
    parser.add_argument("--only", help="comma-separated scenario names to run (default: all)")
    parser.add_argument("--profile", help="instead of the rounds: profile one scenario (e.g. document) with perf")
    parser.add_argument("--dwarf", action="store_true",
                        help="with --profile: DWARF call graphs (every Rust frame; slower) instead of frame pointers")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk is missing: apt-get install wrk")
    binary = os.path.abspath(args.binary)
    work = tempfile.mkdtemp(prefix="meterline-load-")
    # warn, plus the shutdown line that counts the admission's store transactions (quota grants, settlements and
    # rate batches per metered request).
    os.environ.update(METERLINE_LOG="warn,meterline::cli=info,meterline::store::sqlite::search_upkeep=info",
                      METERLINE_LOG_FORMAT="text")
    admin = dev_token(binary, work, "--tenant", "0b500000-0000-0000-0000-0000000000ff", "--roles", "Platform.Admin",
                      "--app-id", "bench-ops")
    token_a = dev_token(binary, work, "--tenant", TENANT_A, "--roles", "Documents.Read,Documents.Write,Tenant.Admin")
    token_b_admin = dev_token(binary, work, "--tenant", TENANT_B, "--roles", "Tenant.Admin")
    # As the Functions host starts it: the `invoke` scenario posts the host's envelope to `POST /Documents`.
    server = Server(binary, work, host_mode=True)
    try:
        server.wait_ready()
        base = f"http://127.0.0.1:{server.port}"
        unthrottle(base, admin, (TENANT_A, TENANT_B))
        # Tenant B's application is a registered API client: its calls resolve the tenant through the registration.
        call(base, "POST", "/api/v1/clients", token_b_admin,
             {"appId": "bench-client-b", "displayName": "Benchmark client", "roles": ["Documents.Read", "Documents.Write"]})
        token_b = dev_token(binary, work, "--tenant", TENANT_B, "--app-id", "bench-client-b", "--roles",
                            "Documents.Read,Documents.Write")
        # The fastest scenarios each call as a client of their own, a new one in each round (index 0 also serves
        # the profile and the half-load rounds): the rate limit is per (tenant, client), and the plan's highest
        # rate (1 000 000 a minute, burst 100 000) is below what one client sends when the pipeline serves over
        # 16 700 calls a second, so a shared client would measure 429s; a round starts with a full burst, which
        # lasts a 3 s round up to about 50 000 calls a second.
        clients = {}
        for scenario in ("me", "document"):
            for round_no in range(max(args.rounds, 1)):
                app_id = f"bench-client-{scenario}" + (f"-{round_no + 1}" if round_no else "")
                call(base, "POST", "/api/v1/clients", token_b_admin,
                     {"appId": app_id, "displayName": f"Benchmark client ({scenario})", "roles": ["Documents.Read"]})
                clients[scenario, round_no] = "Bearer " + dev_token(binary, work, "--tenant", TENANT_B, "--app-id",
                                                                    app_id, "--roles", "Documents.Read")
        seeded = {}
        for name, token in (("a", token_a), ("b", token_b)):
            docs, secs = seed(server.port, token, args.documents, 8)
            seeded[name] = docs
            print(f"seeded {len(docs)} documents into tenant {name} in {secs:.1f} s", file=sys.stderr)
        print(f"search index compaction after the seeding: {wait_for_compaction(server.log_path)}", file=sys.stderr)
        doc_id = seeded["b"][len(seeded["b"]) // 2]["id"]
        idle_rss = rss_kib(server.proc.pid)

        envelope = json.dumps({
            "Data": {"req": {"Url": f"https://app.azurewebsites.net/api/v1/documents/{doc_id}", "Method": "GET",
                             "Query": {}, "Headers": {"Authorization": [f"Bearer {token_b}"]},
                             "Params": {"rest": doc_id}, "Identities": []}},
            "Metadata": {"rest": json.dumps(doc_id), "Headers": {}, "sys": {"MethodName": "Documents"}},
        }).encode()
        # The envelope's answer must itself be a 200, or the scenario measures an error path.
        with urllib.request.urlopen(urllib.request.Request(base + "/Documents", data=envelope, method="POST",
                                                           headers={"Content-Type": "application/json"})) as r:
            inner = json.load(r)["Outputs"]["res"]
            assert str(inner["statusCode"]) == "200", inner
        create_body = json.dumps({"title": "Load test document", "docType": "memo", "tags": ["load", "topic-tax"],
                                  "effectiveDate": "2026-01-01"}).encode()
        search = "/api/v1/documents?q=regulation&tag=topic-tax&orderby=effectiveDate%20desc&maxpagesize=25"
        auth_b = f"Bearer {token_b}"
        scenarios = [
            ("baseline", "`GET /api/health`", dict(url=base + "/api/health")),
            ("me", "`GET /api/v1/me`", dict(url=base + "/api/v1/me", auth=clients["me", 0])),
            ("document", "`GET /api/v1/documents/{id}`",
             dict(url=f"{base}/api/v1/documents/{doc_id}", auth=clients["document", 0])),
            ("search", "`GET /api/v1/documents?q=regulation&tag=topic-tax&orderby=effectiveDate desc&maxpagesize=25`",
             dict(url=base + search, auth=auth_b)),
            # Creates go to tenant a: tenant b's search must see the same 10 000 documents in every round.
            ("create", "`POST /api/v1/documents`",
             dict(url=base + "/api/v1/documents", auth=f"Bearer {token_a}", method="POST", body=create_body)),
            ("invoke", "`POST /Documents` (default mode: GET document in the host's envelope)",
             dict(url=base + "/Documents", method="POST", body=envelope)),
        ]
        wrk(base + "/api/health", 2, args.connections)  # warm-up
        if args.profile:
            profile(server.proc.pid, dict((n, spec) for n, _, spec in scenarios)[args.profile], args, work)
            return
        if args.only:
            scenarios = [s for s in scenarios if s[0] == "baseline" or s[0] in args.only.split(",")]
        results = {name: [] for name, _, _ in scenarios}
        sampler = RssSampler(server.proc.pid)
        merge_cpu, created = 0.0, 0  # the handler's CPU for the index merges after the create rounds; documents created
        for round_no in range(args.rounds):
            for name, _, spec in scenarios:
                if (name, round_no) in clients:
                    spec = dict(spec, auth=clients[name, round_no])
                cpu_before = cpu_seconds(server.proc.pid)
                r = wrk(seconds=args.seconds, connections=args.connections, workdir=work, **spec)
                r["cpu_s"] = cpu_seconds(server.proc.pid) - cpu_before
                results[name].append(r)
                if name == "create":
                    # The creates leave segments in the search index, which the store merges once writes pause
                    # (5 s): waited for here, so that the merge's CPU is not charged to the next scenario's
                    # requests, and reported on its own below.
                    before, cpu_before = compactions(server.log_path), cpu_seconds(server.proc.pid)
                    waited = wait_for_compaction(server.log_path, timeout=30.0, before=before)
                    merge_cpu += cpu_seconds(server.proc.pid) - cpu_before
                    created += r["requests"]
                    print(f"round {round_no + 1} search index merge after the creates: {waited}", file=sys.stderr)
                print(f"round {round_no + 1} {name}: {r['rps']:.0f} req/s p50 {r['p50_us'] / 1000:.2f} ms "
                      f"p99 {r['p99_us'] / 1000:.2f} ms p99.9 {r['p999_us'] / 1000:.2f} ms non-2xx {r['non2xx']}",
                      file=sys.stderr)
        peak_rss = sampler.stop()

        print(f"| scenario | req/s (min / median / max) | p50 ms | p99 ms | p99.9 ms | / baseline | non-2xx |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for name, label, _ in scenarios:
            runs = results[name]
            rps = sorted(r["rps"] for r in runs)
            ratio = statistics.median(r["rps"] / b["rps"] for r, b in zip(runs, results["baseline"]))
            med = lambda key: statistics.median(r[key] for r in runs) / 1000  # noqa: E731
            print(f"| {label} | {rps[0]:,.0f} / {statistics.median(rps):,.0f} / {rps[-1]:,.0f} | {med('p50_us'):.2f} | "
                  f"{med('p99_us'):.2f} | {med('p999_us'):.2f} | {ratio:.2f} | {sum(r['non2xx'] for r in runs)} |"
                  .replace(",", " "))
        # The handler's own CPU time per request (all its threads, user and system), what a consumption plan's
        # execution time is made of; docs/cost-model.md uses it.
        print("\nhandler CPU per request (all threads, user + system; the load generator's own is not in it): " + ", ".join(
            f"{name} {1e6 * sum(r['cpu_s'] for r in results[name]) / sum(r['requests'] for r in results[name]):.0f} µs"
            for name, _, _ in scenarios))
        if created:
            print(f"\nsearch index merges after the create rounds (5 s after the last write, waited for between "
                  f"scenarios): {merge_cpu:.2f} s of the handler's CPU in all, {1e6 * merge_cpu / created:.0f} µs per "
                  f"document created (the index held {2 * args.documents + created} documents at the end)")
        print(f"\nbinary: {os.path.getsize(binary) / 1e6:.1f} MB; RSS idle after seeding "
              f"{2 * args.documents} documents: {idle_rss / 1024:.1f} MiB; peak RSS under load: {peak_rss / 1024:.1f} MiB")
        if "document" in results and os.path.exists(args.loadgen):
            half_load(args, scenarios, results, work)
        elif "document" in results:
            print(f"\nHalf-load latencies skipped: {args.loadgen} is missing (cargo build --release -p loadgen).")
    finally:
        server.stop()
        admission = admission_transactions(server.log_path)
        if admission:
            print(f"\n{admission}")
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
