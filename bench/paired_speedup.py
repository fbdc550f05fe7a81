"""The fused op's speed-up over a reference, in paired rounds: one speed-up target of the CPU suite, repeated.

The suite (``pytest bench/``) times a reference call of seconds once or a few times, with the fused op beside
it; on a shared machine one call's time drifts by more than a target's margin may be, and such a target is then
decided by chance. Here each round times the reference once and the fused op 3 times just before and 3 times
just after it (their median); the result is the median over rounds of the per-round ratio, with a bootstrap
95 % interval of that median.

With ``--products`` (``hard_negative_pairs``, forward+backward) each round also times the two matrix products
the fused CPU kernels make (docs/design.md §4, §5): ``X Xᵀ``'s upper triangle in 64-row panels and one
``B × B × D`` product, ``(dG + dGᵀ) X``, on the case's ``X``. The reference's time over theirs bounds what a
kernel making those products could reach; the fused op's time over theirs is what the rest of it costs.

    python bench/paired_speedup.py --workload W2 --pairs adjacent --target hard_negative_pairs \\
        --impl compiled --rounds 15 --products
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import random
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
# The checkout this file is in, ahead of an installed ee_cuda: comparing builds means running this file from
# each build's checkout (the JSON's machine record names the ee_cuda that ran).
sys.path[:0] = [HERE, os.path.dirname(HERE)]

import torch

import benchlib as bl

FUSED_CALLS = 3        # fused calls just before and just after each reference call
PANEL_ROWS = 64        # gram_cpu.h's panels


def timed(step):
    t = time.perf_counter()
    step()
    return time.perf_counter() - t


def products_step(X):
    """The fused pairs kernels' two products on X: the upper Gram panels and one B x B x D product."""
    X = X.detach()
    B = X.shape[0]
    G, S, dX = torch.empty(B, B), torch.randn(B, B, generator=torch.Generator().manual_seed(3)), torch.empty_like(X)

    def step():
        for r in range(0, B, PANEL_ROWS):
            torch.mm(X[r:r + PANEL_ROWS], X[r:].t(), out=G[r:r + PANEL_ROWS, r:])
        torch.mm(S, X, out=dX)
    return step


def median_interval(values, draws=2000, seed=0):
    """The median and a bootstrap 95 % interval of it (percentiles of the medians of resamples)."""
    rng = random.Random(seed)
    medians = sorted(statistics.median(rng.choices(values, k=len(values))) for _ in range(draws))
    return statistics.median(values), medians[int(0.025 * draws)], medians[int(0.975 * draws) - 1]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", default="W2", choices=[w for w, v in bl.WORKLOADS.items() if "cpu" in v["devices"]])
    ap.add_argument("--pairs", default="adjacent", choices=("adjacent", "all"))
    ap.add_argument("--target", default="hard_negative_pairs", choices=bl.OPS + bl.LOSSES)
    ap.add_argument("--impl", default="compiled", choices=("eager", "compiled"))
    ap.add_argument("--mode", default="fwdbwd", choices=bl.MODES)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--products", action="store_true", help="also time the fused pairs kernels' two products")
    ap.add_argument("--json", help="write the rounds and the summary here")
    args = ap.parse_args(argv)
    if args.products and (args.target != "hard_negative_pairs" or args.mode != "fwdbwd"):
        ap.error("--products: the two products are those of hard_negative_pairs' forward+backward")
    ok, why = bl.fused_available("cpu")
    if not ok:
        sys.exit(f"no fused CPU kernels: {why}")
    torch.set_num_threads(args.threads)
    bl.RSSMeter()  # glibc's allocator thresholds pinned as in the suite
    configs = [c for c in bl.workload_configs([args.workload]) if c.pairs == args.pairs]
    if not configs:
        ap.error(f"{args.workload} has no {args.pairs} pairs")
    cfg = configs[0]
    X, labels, pairs, grad = bl.setup_case(cfg, args.target)
    steps = {impl: bl.make_step(cfg, args.target, args.mode, bl.build_fn(cfg, args.target, impl, labels, pairs),
                                X, grad)[0] for impl in ("fused", args.impl)}
    if args.products:
        steps["products"] = products_step(X)
    for step in steps.values():  # compilation, first-touch pages
        step()
        step()
    times = {k: [] for k in steps}
    gc.disable()
    try:
        for rnd in range(args.rounds):
            before = [timed(steps["fused"]) for _ in range(FUSED_CALLS)]
            times[args.impl].append(timed(steps[args.impl]))
            times["fused"].append(statistics.median(before + [timed(steps["fused"]) for _ in range(FUSED_CALLS)]))
            if args.products:
                times["products"].append(statistics.median(timed(steps["products"]) for _ in range(FUSED_CALLS)))
            print(f"round {rnd}: " + ", ".join(f"{k} {v[-1] * 1e3:.2f} ms" for k, v in times.items()), flush=True)
    finally:
        gc.enable()
    comparisons = [(args.impl, "fused")]
    if args.products:
        comparisons += [(args.impl, "products"), ("fused", "products")]
    summary = {}
    for a, b in comparisons:
        m, lo, hi = median_interval([x / y for x, y in zip(times[a], times[b])])
        summary[f"{a}/{b}"] = {"median": m, "ci95": [lo, hi]}
        print(f"{a} / {b}: {m:.2f} (95 % bootstrap interval of the median {lo:.2f}-{hi:.2f}), {args.rounds} rounds")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"case": f"{cfg.label()} {args.target} {args.mode}", "impl": args.impl, "threads": args.threads,
                       "rounds": args.rounds, "seconds": times, "summary": summary,
                       "machine": bl.machine_info("cpu")}, f, indent=1)


if __name__ == "__main__":
    main()
