#!/usr/bin/env python3
"""Where a GPU decode step's time goes, kernel by kernel, from the trace build's record.

    cmake -S . -B build-trace -DMAMBA2_CUDA_TRACE=ON ... && cmake --build build-trace --target mamba2
    MAMBA2_TRACE_FILE=step.txt build-trace/bin/mamba2 bench --model M --device cuda --decode-batch 1 ...
    python3 bench/decode_timeline.py step.txt [--all] [--mamba1]

The file holds the last replayed step: a line a block (grid id, start, passed its wait, end, SM;
global timer in ns). Launches are ordered by their first block's start and named by the step's
structure (embedding, then in_proj / SSD step / out_proj for each layer, or with --mamba1 in_proj /
x_proj / scan step / out_proj, the head, argmax).
For each: "gap" is from the previous launch's last block ending to this one's first block passing
its wait (what a dependent launch costs), "body" from there to its last block ending; then the
means per kind. The trace build's bookkeeping slows a step by ~10%: compare traces with traces.
"""
import argparse
import collections
import sys


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("trace")
    ap.add_argument("--all", action="store_true", help="print every launch, not only the first and last few")
    ap.add_argument("--mamba1", action="store_true",
                    help="a Mamba-1 step: 4 launches a layer (in_proj, x_proj, scan_step, out_proj)")
    a = ap.parse_args()
    grids = collections.defaultdict(list)
    with open(a.trace) as f:
        next(f)
        for line in f:
            grid, start, waited, end, sm = map(int, line.split())
            grids[grid].append((start, waited, end, sm))
    launches = []
    for blocks in grids.values():
        waited = [b[1] for b in blocks if b[1]]
        launches.append(dict(blocks=len(blocks), first=min(b[0] for b in blocks), last=max(b[0] for b in blocks),
                             waited=min(waited) if waited else min(b[0] for b in blocks),
                             end=max(b[2] for b in blocks), first_end=min(b[2] for b in blocks)))
    launches.sort(key=lambda k: k["first"])
    layer = ["in_proj", "x_proj", "scan_step", "out_proj"] if a.mamba1 else ["in_proj", "ssd_step", "out_proj"]
    if len(launches) < 3 + len(layer) or (len(launches) - 3) % len(layer):
        sys.exit(f"{a.trace}: {len(launches)} launches is not a decode step's embedding, {len(layer)} a layer, head, "
                 "argmax")
    names = ["embedding"] + layer * ((len(launches) - 3) // len(layer)) + ["head", "argmax"]
    t0 = launches[0]["first"]
    us = lambda t: (t - t0) / 1000
    kinds = collections.defaultdict(list)
    prev_end = None
    for i, (name, k) in enumerate(zip(names, launches)):
        gap = (k["waited"] - prev_end) / 1000 if prev_end is not None else 0.0
        body = (k["end"] - k["waited"]) / 1000
        kinds[name].append((gap, body, (k["end"] - k["first_end"]) / 1000))
        if a.all or i < 7 or i >= len(launches) - 3:
            print(f"{i:4d} {name:9s} {k['blocks']:6d} blocks  start {us(k['first']):8.2f}..{us(k['last']):8.2f}  "
                  f"past wait {us(k['waited']):8.2f}  end {us(k['end']):8.2f}  gap {gap:5.2f}  body {body:6.2f} us")
        prev_end = k["end"]
    print(f"step: {us(launches[-1]['end']):.1f} us, {len(launches)} launches")
    for name, v in kinds.items():
        n = len(v)
        print(f"{name:9s} x{n:3d}: gap {sum(x[0] for x in v) / n:5.2f} us, body {sum(x[1] for x in v) / n:6.2f} us, "
              f"spread of the blocks' ends {sum(x[2] for x in v) / n:5.2f} us")


if __name__ == "__main__":
    main()
