#!/usr/bin/env python3
"""Where a CUDA program's GPU waits: reads the timeline cupti_timeline.cpp wrote and prints, for
the stretch between the first and last kernel whose name holds --mark (say, the optimiser's, once
a training step), the GPU's busy and idle time a stretch, the idle gaps grouped by the kernels
around them and by the host call that ended inside them, and the host's API calls by time.

  python3 bench/timeline/gaps.py t.tsv [--mark adamw] [--skip 2] [--top 25]

A gap is "host-bound" when the work after it was launched after the GPU had gone idle: the
GPU waited for the host, not for a dependency.
"""
import argparse
import bisect
import collections
import re
import subprocess


def short(name, width=60):
    name = name.replace("(anonymous namespace)::", "").replace("void ", "")
    while True:  # template arguments out, innermost first
        shorter = re.sub(r"<[^<>]*>", "", name)
        if shorter == name:
            break
        name = shorter
    name = re.sub(r"\(.*", "", name)
    return name[-width:]


def demangle(names):
    names = list(names)
    if not names:
        return {}
    out = subprocess.run(["c++filt"], input="\n".join(names), capture_output=True, text=True).stdout.split("\n")
    return dict(zip(names, out))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("tsv")
    ap.add_argument("--mark", default="adamw", help="a kernel name's part that appears once a step")
    ap.add_argument("--skip", type=int, default=2, help="steps left out at the start (warm-up)")
    ap.add_argument("--top", type=int, default=25)
    a = ap.parse_args()

    gpu, api, apis = [], {}, []
    for line in open(a.tsv):
        kind, s, e, corr, name = line.rstrip("\n").split("\t", 4)
        s, e, corr = int(s), int(e), int(corr)
        if kind in "KCS":
            gpu.append((s, e, corr, name, kind))
        elif kind in "RD":
            apis.append((s, e, corr, name, kind))
            if kind == "R" or corr not in api:
                api[corr] = (s, e, name)
    gpu.sort()
    apis.sort()
    names = demangle({g[3] for g in gpu if g[4] == "K"})
    label = lambda g: short(names.get(g[3], g[3])) if g[4] == "K" else g[3].split(",")[0]

    marks = [g[1] for g in gpu if g[4] == "K" and a.mark in names.get(g[3], g[3])]
    if len(marks) < a.skip + 2:
        raise SystemExit(f"only {len(marks)} kernels name '{a.mark}': too few stretches")
    t0, t1 = marks[a.skip], marks[-1]
    steps = len(marks) - 1 - a.skip
    print(f"{steps} stretches between '{a.mark}' kernels, {(t1 - t0) / steps / 1e6:.2f} ms each")

    # Busy time: the union of GPU activities; gaps between the merged intervals.
    busy = 0
    gaps = []  # (start, end, previous activity, next activity)
    prev = None
    cur_end = None
    for g in gpu:
        s, e = g[0], g[1]
        if e <= t0 or s >= t1:
            if s < t0:
                prev, cur_end = g, max(cur_end or e, e)
            continue
        s, e = max(s, t0), min(e, t1)
        if cur_end is None or s > cur_end:
            if cur_end is not None and cur_end >= t0:
                gaps.append((cur_end, s, prev, g))
            busy += e - s
            cur_end = e
            prev = g
        elif e > cur_end:
            busy += e - cur_end
            cur_end = e
            prev = g
    idle = (t1 - t0) - busy
    print(f"GPU busy {busy / steps / 1e6:.2f} ms, idle {idle / steps / 1e6:.2f} ms a stretch; "
          f"{len(gaps) / steps:.0f} gaps a stretch")

    api_starts = [x[0] for x in apis]
    by_pair = collections.defaultdict(lambda: [0, 0, 0])
    by_call = collections.defaultdict(lambda: [0, 0])
    host_bound = 0
    for s, e, p, n in gaps:
        d = e - s
        launch = api.get(n[2])
        hb = launch is not None and launch[0] >= s
        if hb:
            host_bound += d
        # The host call that was running when the GPU went idle and ended inside the gap: a wait.
        i = bisect.bisect_left(api_starts, s) - 1
        waited = None
        j = i
        while j >= 0 and j > i - 200:
            x = apis[j]
            if x[1] >= s and x[1] <= e and x[0] <= s:
                waited = x[3]
                break
            j -= 1
        key = (label(p), label(n))
        by_pair[key][0] += d
        by_pair[key][1] += 1
        by_pair[key][2] += d if hb else 0
        if waited:
            by_call[waited][0] += d
            by_call[waited][1] += 1
    print(f"host-bound gaps (launched after the GPU went idle): {host_bound / steps / 1e6:.2f} ms a stretch")
    print(f"\nidle by the kernels around it (ms a stretch, count a stretch, host-bound ms):")
    for (p, n), (d, c, hb) in sorted(by_pair.items(), key=lambda kv: -kv[1][0])[: a.top]:
        print(f"  {d / steps / 1e6:7.3f} {c / steps:6.1f} {hb / steps / 1e6:7.3f}  {p}  ->  {n}")
    print(f"\nidle after a host call that was waiting when the GPU went idle (ms a stretch, count):")
    for name, (d, c) in sorted(by_call.items(), key=lambda kv: -kv[1][0])[: a.top]:
        print(f"  {d / steps / 1e6:7.3f} {c / steps:6.1f}  {name}")
    calls = collections.defaultdict(lambda: [0, 0])
    for s, e, corr, name, kind in apis:
        if s >= t0 and e <= t1:
            calls[(kind, name)][0] += e - s
            calls[(kind, name)][1] += 1
    print(f"\nhost API calls (ms a stretch, count a stretch; D = driver, R = runtime):")
    for (kind, name), (d, c) in sorted(calls.items(), key=lambda kv: -kv[1][0])[: a.top]:
        print(f"  {d / steps / 1e6:7.3f} {c / steps:7.1f}  {kind} {name}")
    kt = collections.defaultdict(lambda: [0, 0])
    for g in gpu:
        if g[0] >= t0 and g[1] <= t1:
            kt[label(g)][0] += g[1] - g[0]
            kt[label(g)][1] += 1
    print(f"\nGPU activities (ms a stretch, count a stretch):")
    for name, (d, c) in sorted(kt.items(), key=lambda kv: -kv[1][0])[: a.top]:
        print(f"  {d / steps / 1e6:7.3f} {c / steps:7.1f}  {name}")


if __name__ == "__main__":
    main()
