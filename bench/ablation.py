"""Side-by-side timings of builds of ee_cuda that differ by one kernel tuning: what each tuning buys.

Each build is a copy of the repository with its library built in place; the rounds alternate the builds, each
in its own process (two builds of the extension cannot share one), and time the fused forward+backward of
the ops on the CPU workloads' rows (docs/design.md §12), 1 thread, medians. The ratio of a build against
the base is the median over rounds of its per-round ratio (paired: same round, same inputs).

    # per build: a checkout of 3253e6e, patched with one of bench/ablations/*.patch (the base: none),
    # built in place (FORCE_ONLY_CPU=1 python setup.py build_ext --inplace)
    python bench/ablation.py --build base=/tmp/abl/base --build no_fma=/tmp/abl/no_fma --rounds 4 \
        --json docs/benchmarks/ablation.json

docs/benchmarks.md's table "What each tuning buys" is written from the JSON by bench/report.py.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import time

# What each build leaves out (its name in --build): the base has every tuning.
TUNINGS = {
    "no_fma": "FMA intrinsics in the pairs backward's D-space sums (with their own run-time CPU check)",
    "no_prefetch": "software prefetches (row path's Gram rows, pairs backward's output rows and dX rows)",
    "no_upper": "upper-triangle Gram in 64-row panels, its mirror, and the row path reading the upper triangle only",
    "no_adjacent": "the row path's vector loads of the adjacent layout's endpoints (gathers instead)",
    "no_symtiles": "register-transposed tiles for G's mirror and dG + dG^T (plain loops instead)",
    "scalar_terms": "the pairs backward's terms computed a vector of outputs at a time (one at a time instead)",
    "one_chain": "two independent minimum chains (even and odd t) in the row path (one chain instead)",
    "plain_norms": "16 partial sums and 8 points per pass in the point norms (one sum, one point instead)",
    "div_keys": "float-reciprocal split of the pair keys (integer division instead)",
    "gram_route": "the pairs backward through the selected points in D-space (always through dG instead)",
    "points_dense": "the points backward's sparse D-space sums (a dense dG and one product instead)",
    "no_chunk": "8 candidate blocks per pass in the points row path (all blocks per pass instead)",
    "plain_row_sums": "8-vector register chunks in the D-space row sums (a plain loop instead)",
    "new": "nothing: the restructured kernels (this revision) against the base",
}
ROWS = [("W1", "adjacent"), ("W1", "all"), ("W1b", "adjacent"), ("W2", "adjacent"), ("W2", "all")]
TARGETS = ("hard_negative_points", "hard_negative_pairs")


def time_rows(min_seconds: float, only: list[str]) -> dict[str, float]:
    """Median seconds of the fused forward+backward of every row, in this process's ee_cuda."""
    import torch

    import benchlib

    torch.set_num_threads(1)
    benchlib.RSSMeter()  # pins glibc's mmap and trim thresholds, as the benchmarks time (bench/benchlib.py)
    gc.disable()
    out = {}
    for name, layout in ROWS:
        cfg = next(c for c in benchlib.workload_configs([name]) if c.pairs == layout)
        for target in TARGETS:
            row = f"{name}[{layout}] {target.split('_')[-1]}"
            if only and row not in only:
                continue
            X, labels, pairs, grad = benchlib.setup_case(cfg, target)
            step, _ = benchlib.make_step(cfg, target, "fwdbwd", benchlib.build_fn(cfg, target, "fused", labels, pairs),
                                         X, grad)
            step()
            times, t_end = [], time.perf_counter() + min_seconds
            while len(times) < 5 or time.perf_counter() < t_end:
                t0 = time.perf_counter()
                step()
                times.append(time.perf_counter() - t0)
            out[row] = statistics.median(times)
    return out


def run_build(path: str, min_seconds: float, only: list[str]) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([path, os.path.dirname(os.path.abspath(__file__))]),
               OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", "--min-seconds", str(min_seconds)]
    cmd += [a for r in only for a in ("--row", r)]
    res = subprocess.run(cmd, env=env, cwd=path, capture_output=True, text=True, check=True)
    return json.loads(res.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", action="append", default=[], metavar="NAME=PATH",
                    help="a build to time; the first is the base the others are compared with")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=0.6, help="timing per row and build, each round")
    ap.add_argument("--row", action="append", default=[], help="time only this row (e.g. 'W2[adjacent] pairs')")
    ap.add_argument("--json", help="where to write the timings and ratios")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(time_rows(args.min_seconds, args.row)))
        return
    builds = [b.split("=", 1) for b in args.build]
    if len(builds) < 2:
        ap.error("give a base and at least one other --build")
    rounds = []
    for k in range(args.rounds):
        order = builds[k % len(builds):] + builds[:k % len(builds)]  # each build leads a round in turn
        rounds.append({name: run_build(path, args.min_seconds, args.row) for name, path in order})
        print(f"round {k + 1}/{args.rounds} done", file=sys.stderr)
    base = builds[0][0]
    rows = list(rounds[0][base])
    result = {"base": base, "builds": {n: p for n, p in builds}, "rounds": rounds, "ratio": {}, "seconds": {},
              "left_out": {n: TUNINGS.get(n, "") for n, _ in builds}, "min_seconds": args.min_seconds,
              "threads": 1, "command": "python bench/ablation.py " + " ".join(sys.argv[1:])}
    for name, _ in builds:
        result["seconds"][name] = {r: statistics.median(rd[name][r] for rd in rounds) for r in rows}
        result["ratio"][name] = {r: statistics.median(rd[name][r] / rd[base][r] for rd in rounds) for r in rows}
    width = max(len(r) for r in rows)
    print(f"{'row':{width}}  " + "  ".join(f"{n:>10}" for n, _ in builds))
    for r in rows:
        cells = [f"{result['seconds'][base][r] * 1e3:8.2f}ms"] + [f"{result['ratio'][n][r]:9.3f}x" for n, _ in builds[1:]]
        print(f"{r:{width}}  " + "  ".join(cells))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
