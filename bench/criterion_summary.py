#!/usr/bin/env python3
"""Reads the output of several criterion runs of the same benchmarks (stdin) and prints, per benchmark, the
min / median / max of criterion's point estimates over the runs, as a markdown table."""
import re
import statistics
import sys

UNITS = {"ps": 1e-3, "ns": 1.0, "µs": 1e3, "us": 1e3, "ms": 1e6, "s": 1e9}


def fmt(ns):
    for unit, scale in (("ms", 1e6), ("µs", 1e3)):
        if ns >= scale:
            return f"{ns / scale:.4g} {unit}"
    return f"{ns:.4g} ns"


def main():
    estimates, name = {}, None
    for line in sys.stdin:
        m = re.search(r"time:\s+\[\S+ \S+ (\S+) (\S+) \S+ \S+\]", line)
        head = line.split("time:")[0].strip()
        if head:
            name = head
        if m and name:
            estimates.setdefault(name, []).append(float(m.group(1)) * UNITS[m.group(2)])
    runs = max((len(v) for v in estimates.values()), default=0)
    print(f"| benchmark ({runs} runs; criterion's point estimate per run) | min | median | max |")
    print("|---|---:|---:|---:|")
    for name, values in estimates.items():
        print(f"| {name} | {fmt(min(values))} | {fmt(statistics.median(values))} | {fmt(max(values))} |")


if __name__ == "__main__":
    main()
