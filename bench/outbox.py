#!/usr/bin/env python3
"""Outbox publish throughput: how many events per second the OutboxPublisher job sends to Service Bus.

Each run uses a fresh SQLite store in a temp directory: `handler migrate` creates the schema, then N due rows are
inserted into `outbox_messages` with Python's sqlite3, as the store's `insert_outbox` writes them (the table of
handler/migrations/sqlite/0002_data_model.sql: a UUID id, an outbound event type of docs/events.md with a payload
of its schema, created_at = available_at in the past, RFC 3339 with microseconds). Then
`handler run-job outbox-publish` runs (the step the OutboxPublisher timer runs), again until the outbox is empty,
with METERLINE_OUTBOX_BATCH_SIZE = --batch (default: all N rows in one run).

Service Bus is a local endpoint in this process answering the REST send (`POST /{topic}/messages`) with
`201 Created`. The handler only sends over https (as to Azure), so the endpoint serves TLS with a throwaway CA and
server certificate made by the `openssl` command in the temp directory; the handler trusts the CA through
SSL_CERT_FILE, as tests/e2e/outbox.rs does. Authentication is the SAS fallback
(METERLINE_SERVICEBUS_CONNECTION_STRING with Endpoint=sb://127.0.0.1:<port>/), so no identity endpoint is needed.
The endpoint is a stdlib ThreadingHTTPServer with HTTP/1.1 keep-alive; it checks every request (path, SAS
header, BrokerProperties MessageId = the CloudEvent's id, content type) and answers 400 to anything else.

Per run: messages/s end to end (from starting the first `run-job` until the last one exits: process start, store
open, lease, batch read, every send and mark), messages/s while sending (first to last request the endpoint saw),
the handler's CPU time per message, and the endpoint's CPU share (it runs in this Python process and shares the
two cores; near 100 % of a core would make it the limit). Every run is verified: each seeded id arrived exactly
once and every row is marked sent.

Standard library plus the `openssl` command. Usage:
    python3 bench/outbox.py [--events 10000] [--batch N] [--runs 3] [--binary target/release/handler]
"""

import argparse
import datetime
import http.server
import json
import os
import random
import re
import resource
import shutil
import sqlite3
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid

TOPIC = "meterline-events"
KEY_NAME = "bench-send"
KEY = "YmVuY2gta2V5LW5vdC1hLXNlY3JldA=="  # any base64 text; the endpoint does not verify the signature


def make_ca(workdir):
    """A CA and a server certificate for 127.0.0.1 it signed (P-256, valid 2 days); returns (ca, cert, key) paths."""
    if not shutil.which("openssl"):
        sys.exit("the `openssl` command is missing (apt-get install openssl): it makes the endpoint's test certificate")
    ca_key, ca_pem = os.path.join(workdir, "ca.key"), os.path.join(workdir, "ca.pem")
    key, csr, cert = (os.path.join(workdir, name) for name in ("server.key", "server.csr", "server.pem"))
    ext = os.path.join(workdir, "server.ext")
    with open(ext, "w") as f:
        f.write("basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature\n"
                "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    for command in (
        ["req", "-x509", *ec, "-keyout", ca_key, "-out", ca_pem, "-days", "2", "-subj", "/CN=Meterline bench CA",
         "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ["req", *ec, "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca_pem, "-CAkey", ca_key, "-CAcreateserial", "-out", cert, "-days", "2",
         "-extfile", ext],
    ):
        subprocess.run(["openssl", *command], check=True, capture_output=True)
    return ca_pem, cert, key


class ServiceBusEndpoint:
    """The Service Bus REST send over https on 127.0.0.1: 201 for a well-formed send, 400 otherwise."""

    def __init__(self, cert, key):
        self.lock = threading.Lock()
        self.reset()
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as the handler's client expects of Service Bus

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                arrived = time.perf_counter()
                problem = endpoint.check(self.path, self.headers, body)
                with endpoint.lock:
                    endpoint.times.append(arrived)
                    if problem:
                        endpoint.rejected.append(problem)
                    else:
                        endpoint.ids.append(json.loads(self.headers["BrokerProperties"])["MessageId"])
                reply = problem.encode() if problem else b""
                self.send_response_only(400 if problem else 201)
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def setup(self):
                super().setup()
                with endpoint.lock:
                    endpoint.connections += 1

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def reset(self):
        with self.lock:
            self.times, self.ids, self.rejected, self.connections = [], [], [], 0

    @staticmethod
    def check(path, headers, body):
        if path != f"/{TOPIC}/messages":
            return f"unexpected path {path}"
        if not headers.get("Authorization", "").startswith("SharedAccessSignature sr="):
            return "no SAS authorization"
        if not headers.get("Content-Type", "").startswith("application/cloudevents+json"):
            return f"content type {headers.get('Content-Type')!r}"
        try:
            broker = json.loads(headers["BrokerProperties"])
            event = json.loads(body)
        except (KeyError, ValueError) as e:
            return f"bad BrokerProperties or body: {e}"
        if broker.get("MessageId") != event.get("id") or broker.get("Label") != event.get("type"):
            return f"BrokerProperties {broker} do not match the event's id and type"
        return None

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def stamp(t):
    """The store's timestamp format (store::sqlite::timestamp): RFC 3339, microseconds, Z."""
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def outbox_row(rng, i, created):
    """The i-th seeded row: one of the outbound event types of docs/events.md with a payload of its schema."""
    tenant = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    month = created.date().replace(day=1)
    kind = i % 4
    if kind == 0:
        threshold = rng.choice([80, 100])
        quota = rng.choice([50_000, 1_000_000, 10_000_000])
        event_type, subject = "meterline.quota.threshold-crossed.v1", f"tenants/{tenant}/quota/{month}"
        payload = {"tenantId": tenant, "periodStart": str(month), "threshold": threshold, "quotaUnits": quota,
                   "unitsUsed": quota * threshold // 100 + rng.randrange(100)}
    elif kind in (1, 2):
        suspended = kind == 1
        event_type = "meterline.tenant.suspended.v1" if suspended else "meterline.tenant.reactivated.v1"
        subject = f"tenants/{tenant}"
        payload = {"tenantId": tenant, "status": "suspended" if suspended else "active",
                   "previousStatus": "active" if suspended else "suspended", "version": rng.randrange(2, 50),
                   "changedAt": created.isoformat().replace("+00:00", "Z")}
    else:
        previous = (month - datetime.timedelta(days=1)).replace(day=1)
        used = rng.randrange(1_000_000)
        overage = max(0, used - 500_000)
        event_type, subject = "meterline.billing.statement-ready.v1", f"tenants/{tenant}/statements/{previous:%Y-%m}"
        payload = {"statementId": str(uuid.uuid4()), "tenantId": tenant, "period": f"{previous:%Y-%m}",
                   "periodStart": str(previous), "periodEnd": str(month), "planCode": "pro", "currency": "EUR",
                   "quotaUnits": 500_000, "usedUnits": used, "overageUnits": overage, "baseAmountMicros": 49_000_000,
                   "overageAmountMicros": overage * 20, "totalAmountMicros": 49_000_000 + overage * 20}
    at = stamp(created)
    return (str(uuid.uuid4()), event_type, subject, json.dumps(payload, separators=(",", ":")), at, at)


def seed(db_path, events):
    """Inserts `events` due outbox rows; returns their ids."""
    rng = random.Random(20261124)
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(minutes=5)
    rows = [outbox_row(rng, i, start + datetime.timedelta(microseconds=i)) for i in range(events)]
    with sqlite3.connect(db_path) as conn:
        conn.executemany(
            "INSERT INTO outbox_messages (id, event_type, subject, payload, created_at, available_at)"
            " VALUES (?, ?, ?, ?, ?, ?)", rows)
    conn.close()
    return [r[0] for r in rows]


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def one_run(binary, endpoint, ca_pem, events, batch, run_no, keep):
    workdir = tempfile.mkdtemp(prefix="meterline-outbox-")
    try:
        env = dict(os.environ, METERLINE_LOG="warn", METERLINE_LOG_FORMAT="text",
                   METERLINE_SQLITE_PATH=os.path.join(workdir, "meterline.db"),
                   METERLINE_SERVICEBUS_CONNECTION_STRING=(f"Endpoint=sb://127.0.0.1:{endpoint.port}/;"
                                                           f"SharedAccessKeyName={KEY_NAME};SharedAccessKey={KEY}"),
                   METERLINE_OUTBOX_TOPIC=TOPIC, METERLINE_OUTBOX_BATCH_SIZE=str(batch),
                   SSL_CERT_FILE=ca_pem, NO_PROXY="127.0.0.1,localhost", no_proxy="127.0.0.1,localhost")
        for name in ("FUNCTIONS_CUSTOMHANDLER_PORT", "FUNCTIONS_HTTPWORKER_PORT", "METERLINE_SERVICEBUS_NAMESPACE"):
            env.pop(name, None)
        subprocess.run([binary, "migrate"], cwd=workdir, env=env, check=True, capture_output=True)
        # Untimed, on the empty outbox: the first run-job in a directory also creates the local development signing
        # key (an RSA key, about 0.1 s) under data/, which no later run repeats.
        subprocess.run([binary, "run-job", "outbox-publish"], cwd=workdir, env=env, check=True, capture_output=True)
        started = time.perf_counter()
        ids = seed(env["METERLINE_SQLITE_PATH"], events)
        print(f"run {run_no}: seeded {events} outbox rows in {time.perf_counter() - started:.2f} s", file=sys.stderr)

        endpoint.reset()
        cpu_before, own_before = children_cpu(), time.process_time()
        jobs, published = 0, 0
        start = time.perf_counter()
        while published < events:
            done = subprocess.run([binary, "run-job", "outbox-publish"], cwd=workdir, env=env, capture_output=True,
                                  text=True)
            jobs += 1
            if done.returncode != 0:
                raise RuntimeError(f"run-job exited with {done.returncode}: {done.stderr[-2000:]}")
            summary = done.stdout.strip()  # "outbox-publish: published X of Y due events, Z failed ..."
            counts = re.search(r"published (\d+) of \d+ due events, (\d+) failed", summary)
            sent, failed = (int(counts.group(1)), int(counts.group(2))) if counts else (0, 0)
            if failed or sent == 0:
                raise RuntimeError(f"run-job: {summary}; endpoint rejected {endpoint.rejected[:3]}; {done.stderr[-2000:]}")
            published += sent
        wall = time.perf_counter() - start
        handler_cpu, own_cpu = children_cpu() - cpu_before, time.process_time() - own_before

        with endpoint.lock:
            times, seen, rejected = list(endpoint.times), list(endpoint.ids), list(endpoint.rejected)
            connections = endpoint.connections
        if rejected:
            raise RuntimeError(f"the endpoint rejected {len(rejected)} requests, e.g. {rejected[0]}")
        if len(seen) != events or set(seen) != set(ids):
            raise RuntimeError(f"the endpoint saw {len(seen)} sends of {len(set(seen))} ids; {events} were seeded")
        with sqlite3.connect(env["METERLINE_SQLITE_PATH"]) as conn:
            unsent = conn.execute("SELECT COUNT(*) FROM outbox_messages WHERE sent_at IS NULL").fetchone()[0]
        conn.close()
        if unsent:
            raise RuntimeError(f"{unsent} rows are not marked sent")
        sending = times[-1] - times[0]
        result = {
            "end_to_end": events / wall,
            "sending": (events - 1) / sending if sending > 0 else float("nan"),
            "handler_cpu_us": handler_cpu * 1e6 / events,
            "endpoint_cpu": own_cpu / wall * 100,
            "jobs": jobs,
            "connections": connections,
        }
        print(f"run {run_no}: {events} messages in {wall:.2f} s over {jobs} run-job: {result['end_to_end']:.0f} msg/s "
              f"end to end, {result['sending']:.0f} msg/s sending; handler CPU {result['handler_cpu_us']:.0f} µs/msg, "
              f"endpoint CPU {result['endpoint_cpu']:.0f} % of a core; {connections} TLS connections", file=sys.stderr)
        return result
    finally:
        if keep:
            print(f"kept {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=10000, help="outbox rows seeded per run (default 10000)")
    parser.add_argument("--batch", type=int,
                        help="METERLINE_OUTBOX_BATCH_SIZE, rows per run-job (default: all in one; the setting's "
                             "default is 100)")
    parser.add_argument("--runs", type=int, default=3, help="runs, each on a fresh store (default 3)")
    parser.add_argument("--binary", help="handler executable (default: target/release/handler in the repository)")
    parser.add_argument("--keep", action="store_true", help="keep each run's temp directory (database)")
    args = parser.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    binary = os.path.abspath(args.binary or os.path.join(repo, "target", "release", "handler"))
    if not os.access(binary, os.X_OK):
        sys.exit(f"{binary}: not an executable; build it with `cargo build --release -p handler`")
    batch = args.batch or args.events

    certs = tempfile.mkdtemp(prefix="meterline-outbox-ca-")
    endpoint = None
    try:
        ca_pem, cert, key = make_ca(certs)
        endpoint = ServiceBusEndpoint(cert, key)
        results = [one_run(binary, endpoint, ca_pem, args.events, batch, i + 1, args.keep) for i in range(args.runs)]
    finally:
        if endpoint is not None:
            endpoint.stop()
        shutil.rmtree(certs, ignore_errors=True)

    def cells(key, fmt):
        values = sorted(r[key] for r in results)
        return " | ".join(f"{v:{fmt}}".replace(",", " ") for v in (values[0], statistics.median(values), values[-1]))

    print("| outbox publish | min | median | max |")
    print("|---|---:|---:|---:|")
    print(f"| messages/s end to end (all `run-job` processes) | {cells('end_to_end', ',.0f')} |")
    print(f"| messages/s while sending (first to last send at the endpoint) | {cells('sending', ',.0f')} |")
    print(f"| handler CPU µs per message | {cells('handler_cpu_us', '.0f')} |")
    print(f"| endpoint (Python) CPU, % of one core | {cells('endpoint_cpu', '.0f')} |")
    print()
    print(f"{args.events} outbox rows per run (the four outbound event types of docs/events.md in turn), "
          f"METERLINE_OUTBOX_BATCH_SIZE={batch} ({results[0]['jobs']} `handler run-job outbox-publish` per run), "
          f"{args.runs} runs on fresh SQLite stores. Endpoint: Service Bus REST send answered 201 by a Python "
          "ThreadingHTTPServer over TLS (test CA via SSL_CERT_FILE), SAS authentication, keep-alive "
          f"({results[0]['connections']} TLS connection(s) in the first run). "
          "In production the OutboxPublisher timer runs every 30 s (functions/OutboxPublisher/function.json); "
          "each run reads batches (default 100) while they come back full, for up to 20 s of every 30.")


if __name__ == "__main__":
    main()
