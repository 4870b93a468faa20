#!/usr/bin/env python3
"""Sums a heaptrack leak listing (the live heap when the trace ended) by where
our own code allocated. See docs/benchmarks.md, "Per-peer connection memory,
and the heap profile read whole", for how the listing is made.

    heap-summary.py LEAKS.txt PER [--top N] [--depth D] [--under FRAME]

LEAKS.txt: `heaptrack_print -f X.gz --print-leaks 1 --print-peaks 0
--print-allocators 0 --print-temporary 0 -n 100000 -s 100000` (without
`-s`, heaptrack_print lists only 5 backtraces per allocation site and most
of the heap goes unlisted). PER: what to divide by (records, endpoints).
Without --under: bytes per PER by the innermost D frames of our crates.
With --under FRAME: only backtraces whose innermost frame of ours starts
with FRAME, by their innermost D library frames (what a dependency keeps).
"""
import argparse
import collections
import re

OURS = ("apiserver", "proto", "node-agent", "cli", "certs", "localmesh", "netkit")
UNITS = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9}


def size(text):
    m = re.match(r"([\d.]+)([KMG]?)", text)
    return float(m.group(1)) * UNITS[m.group(2)]


def backtraces(path):
    """(bytes, calls, frames innermost first) of every listed backtrace."""
    cur = None
    for line in open(path, encoding="utf-8", errors="replace"):
        m = re.match(r"^([\d.]+[KMG]?) leaked over (\d+) calls from(:?)", line)
        if m:
            if cur:
                yield cur
            # A line without the colon totals one allocation function; the
            # backtraces that follow it (with the colon) are its breakdown.
            cur = (size(m.group(1)), int(m.group(2)), []) if m.group(3) else None
            continue
        m = re.match(r"^\s+at (\S+):(\d+)", line)
        if m and cur:
            cur[2].append(f"{m.group(1)}:{m.group(2)}")
    if cur:
        yield cur


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("leaks")
    ap.add_argument("per", type=float)
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--depth", type=int, default=3)
    ap.add_argument("--under")
    a = ap.parse_args()
    by, calls, total = collections.Counter(), collections.Counter(), 0.0
    for nbytes, n, frames in backtraces(a.leaks):
        total += nbytes
        ours = [f for f in frames if f.split("/")[0] in OURS]
        if a.under:
            if not ours or not ours[0].startswith(a.under):
                continue
            libs = [re.sub(r".*registry/src/[^/]+/", "", f) for f in frames
                    if "registry/src" in f or f.startswith("src/")]
            key = " <- ".join(libs[: a.depth]) or "(in our frame)"
        else:
            key = " <- ".join(ours[: a.depth]) or "(no frame of ours)"
        by[key] += nbytes
        calls[key] += n
    print(f"listed live heap {total / 1e6:.1f} MB = {total / a.per:.0f} B per unit")
    for key, v in by.most_common(a.top):
        print(f"{v / a.per:7.1f} B {calls[key]:9d} calls  {key}")


if __name__ == "__main__":
    main()
