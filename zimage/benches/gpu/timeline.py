"""Where a step's GPU time goes, from the CSV that timeline.c writes: the busy and idle time
of one denoising step, the longest gaps between kernels with what the host was calling
meanwhile, the kernels by total time, the managed-memory migrations of the whole run
and of the step, and the run's CUDA calls by total time (where loading and the first
step's JIT compilation, graph instantiation and module loads go).

    python3 timeline.py TIMELINE.csv [--period N] [--gaps 20] [--json OUT]

The step is found as the kernel sequence's period (the same kernels run each step), the
last whole period of the run; --period gives the kernels a step launches instead.
"""

import argparse
import bisect
import csv
import json
import re
import shutil
import subprocess
from collections import defaultdict


def read(path):
    """Kernels (with copies and memsets), host calls and unified-memory counters."""
    kernels, calls, um = [], [], []
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            rec = (int(row["start"]), int(row["end"]), row["name"])
            {"U": um, "D": calls, "R": calls}.get(row["kind"], kernels).append(rec)
    for records in (kernels, calls, um):
        records.sort()
    return demangled(kernels), calls, um


def demangled(kernels):
    """Kernels with mangled C++ names demangled, by c++filt where the machine has it."""
    mangled = sorted({k[2] for k in kernels if k[2].startswith("_Z")})
    if not mangled or not shutil.which("c++filt"):
        return kernels
    out = subprocess.run(["c++filt"], input="\n".join(mangled), capture_output=True, text=True)
    names = dict(zip(mangled, out.stdout.splitlines()))
    return [(s, e, names.get(n, n)) for s, e, n in kernels]


def migrations(um, t0=None, t1=None):
    """Unified-memory counters by kind: total value (bytes, or fault groups) and time, of
    the records inside [t0, t1] (all of them without bounds)."""
    totals = defaultdict(lambda: [0, 0])
    for start, end, name in um:
        if t0 is not None and (end < t0 or start > t1):
            continue
        _, kind, value = name.split()
        totals[kind][0] += int(value)
        totals[kind][1] += end - start
    return {k: {"value": v, "ms": ns / 1e6} for k, (v, ns) in sorted(totals.items())}


def short(name, width=90):
    name = re.sub(r"^void ", "", name)
    return re.sub(r"[(<].*", "", name)[:width]


def period(names, lo=50, window=1500):
    """The smallest lag at which the last kernels repeat (95% of names equal), over the last
    `window` kernels or two periods: longer than a step, so that a lag at which only the
    transformer's identical blocks repeat does not pass."""
    ids = {n: i for i, n in enumerate(set(names))}
    seq = [ids[n] for n in names]
    n = len(seq)
    for p in range(lo, n // 2 + 1):
        start = max(p, n - max(window, 2 * p))
        same = sum(seq[i] == seq[i - p] for i in range(start, n))
        if same >= 0.95 * (n - start):
            return p
    raise SystemExit(f"no period among {n} kernels: pass --period")


def last_step(kernels, p):
    """The last whole step's kernels, and the GPU's idle time before its first one (the
    step boundary: the host waiting for the step before and building this one's graph)."""
    names = [k[2] for k in kernels]
    end = max(i for i in range(p, len(names)) if names[i] == names[i - p])
    first = end - p + 1
    before = kernels[first][0] - max(k[1] for k in kernels[:first]) if first > 0 else 0
    return kernels[first : end + 1], before


def summarize(kernels, calls, gaps_shown):
    span = kernels[-1][1] - kernels[0][0]
    busy, gaps, reach = 0, [], kernels[0][0]
    for i, (start, end, _) in enumerate(kernels):
        if start > reach:
            gaps.append((start - reach, reach, i))
        busy += max(0, end - max(start, reach))
        reach = max(reach, end)
    call_starts = [c[0] for c in calls]

    def host_during(t0, t1):
        """The host calls overlapping [t0, t1], by overlap (of those begun at most a second
        before it)."""
        lo = bisect.bisect_left(call_starts, t0 - 10**9)
        overlap = defaultdict(int)
        for s, e, name in calls[lo:]:
            if s > t1:
                break
            o = min(e, t1) - max(s, t0)
            if o > 0:
                overlap[name] += o
        return sorted(overlap.items(), key=lambda kv: -kv[1])[:3]

    by_kernel = defaultdict(lambda: [0, 0])
    for start, end, name in kernels:
        by_kernel[short(name)][0] += 1
        by_kernel[short(name)][1] += end - start
    gaps.sort(reverse=True)
    return {
        "kernels": len(kernels),
        "span_ms": span / 1e6,
        "busy_ms": busy / 1e6,
        "idle_ms": (span - busy) / 1e6,
        "idle_in_gaps_over_10us_ms": sum(g for g, _, _ in gaps if g > 10_000) / 1e6,
        "gaps": [
            {
                "us": g / 1e3,
                "at_ms": (t - kernels[0][0]) / 1e6,
                "after": short(kernels[i - 1][2]),
                "before": short(kernels[i][2]),
                "host": [{"call": c, "us": o / 1e3} for c, o in host_during(t, t + g)],
            }
            for g, t, i in gaps[:gaps_shown]
        ],
        "by_kernel": sorted(
            ({"kernel": k, "count": c, "ms": ns / 1e6} for k, (c, ns) in by_kernel.items()),
            key=lambda r: -r["ms"],
        ),
    }


def calls_by_time(calls):
    totals = defaultdict(lambda: [0, 0])
    for start, end, name in calls:
        totals[name][0] += 1
        totals[name][1] += end - start
    return sorted(
        ({"call": k, "count": c, "ms": ns / 1e6} for k, (c, ns) in totals.items()),
        key=lambda r: -r["ms"],
    )


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("csv")
    ap.add_argument("--period", type=int, help="kernels one step launches (default: found)")
    ap.add_argument("--gaps", type=int, default=20)
    ap.add_argument("--json")
    args = ap.parse_args()
    kernels, calls, um = read(args.csv)
    p = args.period or period([k[2] for k in kernels])
    step, before = last_step(kernels, p)
    s = summarize(step, calls, args.gaps)
    s["idle_before_ms"] = before / 1e6
    s["migrations_run"] = migrations(um)
    s["migrations_step"] = migrations(um, step[0][0], step[-1][1])
    s["calls_run"] = calls_by_time(calls)
    print(f"one step: {s['kernels']} kernels, {s['span_ms']:.2f} ms from the first to the last,"
          f" GPU busy {s['busy_ms']:.2f}, idle {s['idle_ms']:.2f}"
          f" ({s['idle_in_gaps_over_10us_ms']:.2f} in gaps over 10 us);"
          f" idle {s['idle_before_ms']:.2f} ms before it")
    print("longest gaps (us, ms into the step, kernel before -> after; host calls meanwhile):")
    for g in s["gaps"]:
        host = ", ".join(f"{h['call']} {h['us']:.0f}" for h in g["host"])
        print(f"  {g['us']:8.1f} {g['at_ms']:7.2f}  {g['after'][:40]} -> {g['before'][:40]}; {host}")
    print("kernels by time (ms, count):")
    for r in s["by_kernel"][:25]:
        print(f"  {r['ms']:8.3f} {r['count']:5d}  {r['kernel']}")
    for what, key in [("the whole run", "migrations_run"), ("the step", "migrations_step")]:
        rows = ", ".join(f"{k} {v['value']} in {v['ms']:.1f} ms" for k, v in s[key].items())
        print(f"managed memory, {what}: {rows or 'none'}")
    print("CUDA calls of the whole run by time (ms, count):")
    for r in s["calls_run"][:20]:
        print(f"  {r['ms']:10.1f} {r['count']:7d}  {r['call']}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(s, f, indent=1)


if __name__ == "__main__":
    main()
