#!/usr/bin/env python3
"""Cold start of the handler as the Azure Functions host sees it.

The host starts `handler serve` with FUNCTIONS_CUSTOMHANDLER_PORT set, then polls `GET /` until any
HTTP response arrives; connection refused means "not yet" (functions-host-protocol.md, 2.4). This
script does the same and times exec -> first complete response. Each run starts the handler twice
on one SQLite file: first on a fresh database (migrations applied), then on the migrated one.

The host polls every 25 ms; we poll every 1 ms, so these figures are the handler's own start time
and the host adds up to one polling interval on top.

Standard library only. Usage: python3 bench/startup.py [--runs 20] [--binary target/release/handler]
"""

import argparse
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

POLL_INTERVAL = 0.001  # seconds between readiness attempts
READY_TIMEOUT = 30.0  # the host's default initialization budget


def free_port():
    # Same trick as the host (WorkerUtilities.GetUnusedTcpPort): bind port 0, read it, close.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_root(port):
    """One `GET /`. Returns the status line, or None if the connection was refused."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    except ConnectionRefusedError:
        return None
    with sock:
        sock.sendall(f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        # Read the head, then exactly Content-Length bytes of body (or to EOF if there is none).
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                raise RuntimeError(f"connection closed before a full response: {data!r}")
            data += chunk
        head, body = data.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value.strip())
        while length is None or len(body) < length:
            chunk = sock.recv(4096)
            if not chunk:
                break
            body += chunk
        if not lines[0].startswith("HTTP/1."):
            raise RuntimeError(f"not an HTTP response: {lines[0]!r}")
        return lines[0]


def start_once(binary, workdir):
    """Starts the handler in `workdir`, returns milliseconds until its first response, then stops it."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        FUNCTIONS_CUSTOMHANDLER_PORT=str(port),
        FUNCTIONS_CUSTOMHANDLER_WORKER_ID=str(uuid.uuid4()),
        METERLINE_SQLITE_PATH=os.path.join(workdir, "meterline.db"),
        METERLINE_LOG="warn",
        # Production authentication: Entra ID. Its keys are fetched on the first token, not at startup; local mode
        # would also generate the development RSA key on a first start (about 150 ms, once per machine).
        METERLINE_AUTH_MODE="entra",
        METERLINE_AUTH_AUTHORITY="https://login.microsoftonline.com/organizations/v2.0",
        METERLINE_AUTH_AUDIENCES="api://meterline",
    )
    # Output goes to a file, not a pipe: an unread pipe could fill and stall the handler.
    log_path = os.path.join(workdir, "handler.log")
    with open(log_path, "ab") as log:
        start = time.perf_counter()
        proc = subprocess.Popen([binary, "serve"], cwd=workdir, env=env, stdout=log, stderr=log)
    try:
        while True:
            if get_root(port) is not None:
                elapsed_ms = (time.perf_counter() - start) * 1000
                break
            if proc.poll() is not None:
                raise RuntimeError(f"handler exited with {proc.returncode} before answering; see {log_path}")
            if time.perf_counter() - start > READY_TIMEOUT:
                raise RuntimeError(f"no response within {READY_TIMEOUT} s; see {log_path}")
            time.sleep(POLL_INTERVAL)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    return elapsed_ms


def row(label, samples):
    return (
        f"| {label} | {len(samples)} | {statistics.median(samples):.1f} "
        f"| {min(samples):.1f} | {max(samples):.1f} |"
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="number of runs (default 20)")
    parser.add_argument(
        "--binary", help="handler executable (default: target/release/handler in the repository)"
    )
    args = parser.parse_args()
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    # Absolute, because the handler runs with a temp dir as its working directory.
    binary = os.path.abspath(args.binary or os.path.join(repo, "target", "release", "handler"))
    if not os.access(binary, os.X_OK):
        sys.exit(f"{binary}: not an executable; build it with `cargo build --release -p handler`")

    fresh, migrated = [], []
    for i in range(args.runs):
        workdir = tempfile.mkdtemp(prefix="meterline-bench-")
        try:
            fresh.append(start_once(binary, workdir))
            migrated.append(start_once(binary, workdir))  # same directory, so same database
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        print(f"run {i + 1}/{args.runs}: fresh {fresh[-1]:.1f} ms, migrated {migrated[-1]:.1f} ms", file=sys.stderr)

    size_mb = os.path.getsize(binary) / 1_000_000
    print("| start (exec -> first response to `GET /`) | runs | median ms | min ms | max ms |")
    print("|---|---:|---:|---:|---:|")
    print(row("fresh database (migrations applied)", fresh))
    print(row("migrated database (second start)", migrated))
    print()
    print(f"Binary: `{binary}`, {size_mb:.1f} MB ({os.path.getsize(binary)} bytes)")


if __name__ == "__main__":
    main()
