#!/usr/bin/env python3
"""Service Bus consumer throughput: how many integration events per second `IntegrationEvents` applies.

The handler is driven the way the Azure Functions host drives it (docs: functions-host-protocol.md, sections 2
and 8; tests/e2e/support/host.rs): `handler serve` started with FUNCTIONS_CUSTOMHANDLER_PORT and a worker id, ready
when `GET /` answers, then one `POST /IntegrationEvents` per Service Bus message, carrying the invocation envelope
(`Data.message` = the body as JSON text inside a JSON string; `Metadata` with the v5 extension's keys, the body's
top-level properties promoted into it, and `sys`), over keep-alive connections, --concurrency at a time (default:
`extensions.serviceBus.maxConcurrentCalls` of host.json, what one host instance runs at once).

Each run uses a fresh SQLite store: a plan is created through the API (`dev-token` admin), --tenants tenants arrive
as `meterline.tenant.upserted.v1` invocations, then the timed part delivers --events events of one type:

  usage      `meterline.usage.reported.v1` (default): external metering, the high-volume inbound type; each
             event writes its inbox row, one usage event and a quota debit in one transaction
  documents  `meterline.documents.upserted.v1` with --documents-per-event documents (as bench/paging.py makes
             them), created in one transaction with the inbox row

Every invocation must answer 200 with a log line saying "applied"; afterwards the store is checked (one inbox row
per event, and one usage event or the documents per event). Per run: events/s (all events / time from the first
send to the last answer), invocation latency p50/p99, the handler's CPU time per event, and the client's CPU share
(this Python process shares the two cores with the handler; the envelopes are built before the clock starts).

Standard library only. Usage:
    python3 bench/consumer.py [--events 10000] [--event usage|documents] [--concurrency 16] [--runs 3]
                              [--binary target/release/handler]
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
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from paging import free_port, make_document  # noqa: E402  (same directory)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUNCTION = "IntegrationEvents"
HOST_VERSION = "4.1037.0.0"  # as tests/e2e/support/host.rs
READY_TIMEOUT = 30.0
ADMIN_DIRECTORY = "0b500000-0000-0000-0000-0000000000ff"
SOURCE = "/bench/meter"
METERS = ["ocr.pages", "translation.chars", "storage.gb-hours", "export.rows"]


def host_concurrency():
    """What one host instance runs at once: host.json `extensions.serviceBus.maxConcurrentCalls` (SDK default 16)."""
    try:
        with open(os.path.join(REPO, "host.json")) as f:
            return int(json.load(f)["extensions"]["serviceBus"]["maxConcurrentCalls"])
    except (OSError, KeyError, ValueError):
        return 16


def trigger_name():
    with open(os.path.join(REPO, "functions", FUNCTION, "function.json")) as f:
        return next(b["name"] for b in json.load(f)["bindings"] if b["type"] == "serviceBusTrigger")


class HostedHandler:
    """`handler serve` started as the Functions host starts it; stop() sends SIGTERM (SIGKILL after 15 s)."""

    def __init__(self, binary, workdir, env):
        self.port = free_port()
        worker = str(uuid.uuid4())
        env = dict(env, FUNCTIONS_CUSTOMHANDLER_PORT=str(self.port), FUNCTIONS_HTTPWORKER_PORT=str(self.port),
                   FUNCTIONS_CUSTOMHANDLER_WORKER_ID=worker, FUNCTIONS_HTTPWORKER_ID=worker,
                   FUNCTIONS_APP_ROOT_PATH=workdir, FUNCTIONS_WORKER_RUNTIME="custom")
        self.log_path = os.path.join(workdir, "handler.log")
        with open(self.log_path, "ab") as log:  # a file, not a pipe: an unread pipe could stall the handler
            self.proc = subprocess.Popen([binary, "serve"], cwd=workdir, env=env, stdout=log, stderr=log)
        start = time.monotonic()
        while True:  # the host's readiness poll: any HTTP answer to `GET /`
            if self.proc.poll() is not None:
                raise RuntimeError(f"handler exited with {self.proc.returncode}; see {self.log_path}")
            try:
                conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
                conn.request("GET", "/")
                conn.getresponse().read()
                conn.close()
                return
            except OSError:
                pass
            if time.monotonic() - start > READY_TIMEOUT:
                raise RuntimeError(f"not ready within {READY_TIMEOUT} s; see {self.log_path}")
            time.sleep(0.025)

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def json_text(value):
    """`JsonConvert.SerializeObject(value)`: a scalar's JSON text, itself a JSON string (protocol notes 3.1)."""
    return json.dumps(value)


def envelope(binding, body, sequence):
    """The invocation body the host POSTs for one Service Bus message (protocol notes 8.1, 8.2; host.rs)."""
    now = datetime.datetime.now(datetime.timezone.utc)
    metadata = {key: {} for key in ("MessageReceiver", "MessageSession", "MessageActions", "SessionActions",
                                    "ReceiveActions")}
    metadata.update({
        "Client": {"FullyQualifiedNamespace": "meterline.servicebus.windows.net", "IsClosed": False,
                   "TransportType": 0},
        "DeliveryCount": "1",
        "LockToken": json_text(str(uuid.uuid4())),
        "ExpiresAtUtc": "9999-12-31T23:59:59",
        "ExpiresAt": "9999-12-31T23:59:59+00:00",
        "EnqueuedTimeUtc": now.strftime("%Y-%m-%dT%H:%M:%S"),
        "EnqueuedTime": now.strftime("%Y-%m-%dT%H:%M:%S+00:00"),
        "MessageId": json_text(uuid.uuid4().hex),
        "ContentType": json_text("application/cloudevents+json"),
        "SequenceNumber": str(sequence),
        "ApplicationProperties": {},
        "UserProperties": {},
    })
    # A JSON object body has its top-level properties copied into Metadata (objects as they are, scalars as JSON
    # text, arrays and nulls skipped), overwriting keys of the same name.
    for key, value in json.loads(body).items():
        if isinstance(value, dict):
            metadata[key] = value
        elif isinstance(value, bool):
            metadata[key] = json_text("True" if value else "False")
        elif isinstance(value, (int, float, str)):
            metadata[key] = json_text(str(value))
    metadata["sys"] = {"MethodName": FUNCTION, "UtcNow": now.isoformat().replace("+00:00", "Z"),
                       "RandGuid": str(uuid.uuid4())}
    return json.dumps({"Data": {binding: json_text(body)}, "Metadata": metadata}).encode()


def cloud_event(event_type, event_id, data):
    return json.dumps({"specversion": "1.0", "id": event_id, "source": SOURCE, "type": event_type,
                       "time": datetime.datetime.now(datetime.timezone.utc).isoformat().replace("+00:00", "Z"),
                       "datacontenttype": "application/json", "data": data})


def usage_event(rng, i, tenants, now):
    data = {"tenantId": tenants[i % len(tenants)], "meter": rng.choice(METERS), "units": rng.randrange(1, 1000),
            "occurredAt": (now - datetime.timedelta(seconds=rng.randrange(3600))).isoformat().replace("+00:00", "Z")}
    if i % 3 == 0:
        data["clientId"] = f"meter-client-{i % 7}"
    return cloud_event("meterline.usage.reported.v1", f"usage-{i}", data)


def documents_event(rng, i, tenants, per_event):
    documents = []
    for j in range(per_event):
        doc = make_document(rng, i * per_event + j)
        doc["id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        documents.append(doc)
    return cloud_event("meterline.documents.upserted.v1", f"documents-{i}",
                       {"tenantId": tenants[i % len(tenants)], "documents": documents})


def invoke_all(port, bodies, concurrency):
    """POSTs every envelope on `concurrency` keep-alive connections; returns (seconds, latencies in ms)."""
    latencies = [0.0] * len(bodies)
    next_index = iter(range(len(bodies)))
    lock = threading.Lock()
    headers = {"Content-Type": "application/json; charset=utf-8", "X-Azure-Functions-HostVersion": HOST_VERSION,
               "User-Agent": f"Azure-Functions-Host/{HOST_VERSION}"}

    def worker():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        try:
            while True:
                with lock:
                    i = next(next_index, None)
                if i is None:
                    return
                start = time.perf_counter()
                conn.request("POST", f"/{FUNCTION}", body=bodies[i],
                             headers=dict(headers, **{"X-Azure-Functions-InvocationId": str(uuid.uuid4())}))
                resp = conn.getresponse()
                data = resp.read()
                latencies[i] = (time.perf_counter() - start) * 1000
                logs = json.loads(data).get("Logs", []) if resp.status == 200 else []
                if resp.status != 200 or not any(": applied " in line for line in logs):
                    raise RuntimeError(f"invocation {i}: {resp.status} {data[:500]!r}")
        finally:
            conn.close()

    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
        for future in [pool.submit(worker) for _ in range(concurrency)]:
            future.result()
    return time.perf_counter() - start, latencies


def percentile(samples, p):
    ordered = sorted(samples)
    return ordered[max(0, -(-len(ordered) * p // 100) - 1)]


def one_run(binary, args, run_no):
    workdir = tempfile.mkdtemp(prefix="meterline-consumer-")
    db_path = os.path.join(workdir, "meterline.db")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("FUNCTIONS_", "METERLINE_"))}
    env.update(METERLINE_LOG="warn", METERLINE_LOG_FORMAT="text", METERLINE_SQLITE_PATH=db_path)
    handler = None
    try:
        admin = subprocess.run([binary, "dev-token", "--ttl", "1d", "--tenant", ADMIN_DIRECTORY, "--roles",
                                "Platform.Admin", "--app-id", "bench-ops"], cwd=workdir, env=env, check=True,
                               capture_output=True, text=True).stdout.strip()
        handler = HostedHandler(binary, workdir, env)
        plan = {"code": "metered", "name": "Metered", "requestsPerMinute": 1000000, "burst": 100000,
                "monthlyQuotaUnits": 1000000000, "overagePolicy": "allow", "currency": "EUR", "basePriceMicros": 0,
                "overageUnitPriceMicros": 0}
        urllib.request.urlopen(urllib.request.Request(
            f"http://127.0.0.1:{handler.port}/api/v1/plans", data=json.dumps(plan).encode(), method="POST",
            headers={"Authorization": f"Bearer {admin}", "Content-Type": "application/json"})).close()

        binding = trigger_name()
        rng = random.Random(20261124 + run_no)
        tenants = [str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(args.tenants)]
        upserts = [envelope(binding, cloud_event("meterline.tenant.upserted.v1", f"tenant-{t}",
                                                 {"tenantId": t, "name": f"Bench tenant {n}", "planCode": "metered"}),
                            n + 1)
                   for n, t in enumerate(tenants)]
        invoke_all(handler.port, upserts, 1)

        now = datetime.datetime.now(datetime.timezone.utc)
        if args.event == "usage":
            bodies = [usage_event(rng, i, tenants, now) for i in range(args.events)]
        else:
            bodies = [documents_event(rng, i, tenants, args.documents_per_event) for i in range(args.events)]
        envelopes = [envelope(binding, body, len(tenants) + i + 1) for i, body in enumerate(bodies)]
        size = statistics.mean(len(e) for e in envelopes)

        cpu_before, own_before = handler.cpu_seconds(), time.process_time()
        seconds, latencies = invoke_all(handler.port, envelopes, args.concurrency)
        handler_cpu, own_cpu = handler.cpu_seconds() - cpu_before, time.process_time() - own_before
        handler.stop()

        with sqlite3.connect(f"file:{db_path}?mode=ro", uri=True) as conn:
            inbox = conn.execute("SELECT COUNT(*) FROM inbox_messages WHERE source = ?", (SOURCE,)).fetchone()[0]
            if args.event == "usage":
                effects = conn.execute("SELECT COUNT(*) FROM usage_events WHERE route_template = "
                                       "'integration:meterline.usage.reported.v1'").fetchone()[0]
                expected = args.events
            else:
                effects = conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
                expected = args.events * args.documents_per_event
            quarantined = conn.execute("SELECT COUNT(*) FROM quarantine_messages").fetchone()[0]
        conn.close()
        if inbox != len(tenants) + args.events or effects != expected or quarantined:
            raise RuntimeError(f"store after the run: {inbox} inbox rows (expected {len(tenants) + args.events}), "
                               f"{effects} effects (expected {expected}), {quarantined} quarantined")
        result = {
            "events_per_s": args.events / seconds,
            "p50": statistics.median(latencies),
            "p99": percentile(latencies, 99),
            "handler_cpu_us": handler_cpu * 1e6 / args.events,
            "client_cpu": own_cpu / seconds * 100,
            "envelope_bytes": size,
        }
        print(f"run {run_no}: {args.events} events in {seconds:.2f} s: {result['events_per_s']:.0f} events/s, "
              f"p50 {result['p50']:.2f} ms, p99 {result['p99']:.2f} ms; handler CPU {result['handler_cpu_us']:.0f} "
              f"µs/event, client CPU {result['client_cpu']:.0f} % of a core", file=sys.stderr)
        return result
    finally:
        if handler is not None:
            handler.stop()
        if args.keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10000, help="events delivered per run (default 10000)")
    parser.add_argument("--event", choices=["usage", "documents"], default="usage",
                        help="usage: meterline.usage.reported.v1 (default); documents: meterline.documents.upserted.v1")
    parser.add_argument("--documents-per-event", type=int, default=10, help="with --event documents (default 10)")
    parser.add_argument("--tenants", type=int, default=10, help="tenants the events are spread over (default 10)")
    parser.add_argument("--concurrency", type=int, default=host_concurrency(),
                        help="invocations in flight (default: host.json serviceBus.maxConcurrentCalls)")
    parser.add_argument("--runs", type=int, default=3, help="runs, each on a fresh store (default 3)")
    parser.add_argument("--binary", help="handler executable (default: target/release/handler in the repository)")
    parser.add_argument("--keep", action="store_true", help="keep each run's temp directory (database, log)")
    args = parser.parse_args()
    binary = os.path.abspath(args.binary or os.path.join(REPO, "target", "release", "handler"))
    if not os.access(binary, os.X_OK):
        sys.exit(f"{binary}: not an executable; build it with `cargo build --release -p handler`")
    if not 1 <= args.documents_per_event <= 100:
        sys.exit("--documents-per-event: 1 to 100 (the event's schema)")

    results = [one_run(binary, args, i + 1) for i in range(args.runs)]

    def cells(key, fmt):
        values = sorted(r[key] for r in results)
        return " | ".join(f"{v:{fmt}}".replace(",", " ") for v in (values[0], statistics.median(values), values[-1]))

    event_type = {"usage": "meterline.usage.reported.v1", "documents": "meterline.documents.upserted.v1"}[args.event]
    print("| `IntegrationEvents` consumer | min | median | max |")
    print("|---|---:|---:|---:|")
    print(f"| events/s | {cells('events_per_s', ',.0f')} |")
    if args.event == "documents":
        for r in results:
            r["documents_per_s"] = r["events_per_s"] * args.documents_per_event
        print(f"| documents/s | {cells('documents_per_s', ',.0f')} |")
    print(f"| invocation p50 ms | {cells('p50', '.2f')} |")
    print(f"| invocation p99 ms | {cells('p99', '.2f')} |")
    print(f"| handler CPU µs per event | {cells('handler_cpu_us', '.0f')} |")
    print(f"| client (Python) CPU, % of one core | {cells('client_cpu', '.0f')} |")
    print()
    per_event = f" of {args.documents_per_event} documents each" if args.event == "documents" else ""
    print(f"`{event_type}`{per_event}, {args.events} events per run over {args.tenants} tenants, "
          f"{args.concurrency} invocations in flight (host.json maxConcurrentCalls is {host_concurrency()}), "
          f"envelopes of {results[0]['envelope_bytes']:.0f} bytes on average, each `POST /{FUNCTION}` as the "
          f"Functions host sends it, {args.runs} runs on fresh SQLite stores, `handler serve` in host mode "
          f"(METERLINE_WORKERS default).")


if __name__ == "__main__":
    main()
