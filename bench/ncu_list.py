#!/usr/bin/env python3
"""Kernel-by-kernel listing of an `ncu --csv --metrics ...` run: one line a launch, in launch
order, a block of lines a profiled process, with the time and each further metric asked for.

  ncu --csv --metrics gpu__time_duration.sum,dram__throughput.avg.pct_of_peak_sustained_elapsed \\
      mamba2 bench --device cuda --ssd 8x2048x24x64x128 --ssd-grad --dtype bf16 --repeats 2 > ncu.csv
  python3 bench/ncu_list.py ncu.csv [--grep bwd_] [--width 70]

The program's own output between ncu's rows is skipped (rows are the lines of 15 CSV fields).
"""
import argparse
import collections
import csv

TIME = "gpu__time_duration.sum"


def short(name):
    return name.replace("(anonymous namespace)::", "").replace("void ", "").replace("mamba2::", "")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("csv")
    ap.add_argument("--grep", default="", help="only kernels whose name holds this")
    ap.add_argument("--width", type=int, default=70, help="characters of a kernel's name")
    args = ap.parse_args()
    launches = collections.OrderedDict()  # (process, launch id) -> {name, grid, metric: value}
    with open(args.csv, newline="") as f:
        for row in csv.reader(f):
            if len(row) != 15 or row[0] == "ID":
                continue
            launch = launches.setdefault((row[1], int(row[0])), {"name": short(row[4]), "grid": row[8]})
            launch[row[12]] = row[14]
    metrics = sorted({k for d in launches.values() for k in d} - {"name", "grid", TIME})
    process = None
    for (pid, lid), d in launches.items():
        if args.grep not in d["name"]:
            continue
        if pid != process:
            process = pid
            print(f"== process {pid}: id, µs, {', '.join(metrics)}, grid, kernel")
        us = float(d.get(TIME, "nan").replace(",", "")) / 1000.0  # ncu reports ns
        rest = " ".join(f"{d.get(m, '-'):>8}" for m in metrics)
        print(f"{lid:5d} {us:9.1f} {rest} {d['grid']:>14} {d['name'][:args.width]}")


if __name__ == "__main__":
    main()
