"""Reproduce the paper's experiments (docs/design.md §11) offline and write a report.

    python -m ee_cuda.repro --out docs/results                 # default: about 17 min on 2 CPU cores
    python -m ee_cuda.repro --full --out docs/results/full     # larger: more seeds, longer runs
    python -m ee_cuda.repro --losses hphn triplet --n 4 --seeds 4 --checkpoints 100 300 --device cuda

Writes ``expN_*.json`` and ``expN_*.png`` for experiments 1-8 (and 9, the memory bank: part of ``--full``
and ``--tiny``, optional in the default), ``run_info.json`` and ``report.md`` into ``--out``; the trained
runs (results and final weights) and the rendered glyph cache go to ``--work-dir`` (default
``<out>/_work``), so an interrupted run resumes where it stopped. Runs are trained ``--jobs`` at a time in
separate processes. Every number in ``report.md`` is read from the JSON files by ``write_report``; rerun it
alone with ``--report-only``.

``--experiments`` into an ``--out`` that holds earlier results adds to them: ``run_info.json`` keeps every
invocation whose experiments are still in the folder (``invocations``, each with the experiments it wrote),
and the report lists them; the configuration must be the one of the results kept (else it refuses, before
training), so that one report never mixes configurations.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time

import torch

from .. import build_info
from .experiments import EXPERIMENTS, Context, ReproConfig, merge_requests
from .report import write_report
from .train import LOSSES

__all__ = ["main", "parse_args", "config_from_args"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m ee_cuda.repro", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/reproduce", help="output folder for report.md, JSON and PNG files")
    p.add_argument("--work-dir", default=None, help="stored runs and caches (default: <out>/_work)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the full configuration (more seeds, longer runs)")
    size.add_argument("--tiny", action="store_true", help="a seconds-long smoke configuration (for tests)")
    p.add_argument("--dataset", choices=("glyphs", "digits"),
                   help="glyphs (default: 492 fine-grained classes) or digits (a 10-class smoke set, no verdicts)")
    p.add_argument("--losses", nargs="+", choices=sorted(LOSSES), help="losses (default: all five)")
    p.add_argument("--n", type=int, help="synthetic points per pair for 'with EE' (default 2)")
    p.add_argument("--seeds", type=int, help="paired seeds of the main loss (default 8)")
    p.add_argument("--checkpoints", type=int, nargs="+", help="iterations at which the main loss is evaluated")
    p.add_argument("--n-sweep", type=int, nargs="+", help="values of n for experiment 4")
    p.add_argument("--device", default="auto", help="auto (default: CUDA when present, else CPU), cpu or cuda")
    p.add_argument("--experiments", type=int, nargs="+", choices=sorted(EXPERIMENTS),
                   help="subset of 1-9 (default: 1-8, and 9 with --full or --tiny); added to the results in --out")
    p.add_argument("--jobs", type=int, default=None,
                   help="runs trained at once in separate processes (default: 2 on CPU, at most the cores; 1 on CUDA)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per job (default 1: on a shared machine more threads are far slower)")
    p.add_argument("--no-progress", action="store_true", help="no progress output")
    p.add_argument("--report-only", action="store_true", help="only rewrite report.md from the JSON in --out")
    return p.parse_args(argv)


def config_from_args(a) -> ReproConfig:
    kw = {}
    if a.dataset:
        kw["dataset"] = a.dataset
    if a.losses:
        kw["losses"] = tuple(a.losses)
    if a.n is not None:
        if a.n < 1:
            raise SystemExit("--n must be >= 1 (0 is the plain loss, always included)")
        kw["n_inner"] = a.n
    if a.seeds is not None:
        if a.seeds < 1:
            raise SystemExit("--seeds must be >= 1")
        kw["main_seeds"] = a.seeds
    if a.checkpoints:
        if min(a.checkpoints) < 1:
            raise SystemExit("--checkpoints must be positive iteration counts")
        kw["checkpoints"] = tuple(sorted(set(a.checkpoints)))
    if a.n_sweep:
        kw["n_sweep"] = tuple(sorted(set(a.n_sweep) | {0}))
    kw["device"] = a.device
    cfg = ReproConfig.full(**kw) if a.full else ReproConfig.tiny(**kw) if a.tiny else ReproConfig(**kw)
    if cfg.main_loss not in cfg.losses:
        cfg.main_loss = cfg.losses[0]
    cfg.cost_losses = tuple(lo for lo in cfg.cost_losses if lo in cfg.losses) or (cfg.losses[0],)
    if cfg.n_inner not in cfg.n_sweep:
        cfg.n_sweep = tuple(sorted(set(cfg.n_sweep) | {cfg.n_inner}))
    return cfg


def main(argv=None) -> str:
    a = parse_args(argv)
    if a.report_only:
        return write_report(a.out)
    threads = torch.get_num_threads()
    torch.set_num_threads(max(a.threads, 1))
    try:
        return _run(a, argv)
    finally:
        torch.set_num_threads(threads)


def _earlier_invocations(out: str, todo, cfg: ReproConfig) -> list:
    """The invocations recorded in ``out``'s ``run_info.json`` whose experiments this one does not redo,
    each with the experiments it keeps; ``SystemExit`` when one ran another configuration."""
    path = os.path.join(out, "run_info.json")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        old = json.load(f)
    kept, mine = [], cfg.to_json()
    for r in old.get("invocations") or [{k: v for k, v in old.items() if k != "invocations"}]:
        left = [e for e in r.get("experiments", []) if e not in todo]
        if not left:
            continue
        differ = sorted(k for k, v in r.get("config", {}).items()
                        if k in mine and k != "default_experiments" and v != mine[k])
        if differ:
            raise SystemExit(f"{out} holds experiments {left} of another configuration (differs in: "
                             f"{', '.join(differ)}); choose another --out, rerun those experiments too, or remove "
                             "their files and run_info.json")
        kept.append({**r, "experiments": left})
    return kept


def _seed_groups(cfg: ReproConfig, todo) -> dict:
    groups = {"main loss": cfg.seeds_of(cfg.main_loss),
              "other losses": cfg.seeds_of(next((lo for lo in cfg.losses if lo != cfg.main_loss), cfg.main_loss)),
              "ablations": cfg.ablation_seed_list()}
    if 9 in todo:
        groups["memory bank"] = cfg.memory_seed_list()
    return groups


def _run(a, argv) -> str:
    cfg = config_from_args(a)
    ctx = Context(cfg, a.out, a.work_dir, progress=not a.no_progress)
    jobs = a.jobs if a.jobs is not None else (1 if cfg.device.startswith("cuda") else min(2, os.cpu_count() or 1))
    started = time.time()
    todo = sorted(set(a.experiments or cfg.default_experiments))
    earlier = _earlier_invocations(a.out, todo, cfg)
    print(f"[ee_cuda.repro] training {len(merge_requests(cfg.requests(todo)))} runs, {jobs} at a time", file=sys.stderr)
    trained = ctx.prefetch(cfg.requests(todo), jobs=jobs, threads=max(a.threads, 1))
    timings = {"training": time.time() - started}
    for i in todo:
        t0 = time.time()
        print(f"[ee_cuda.repro] experiment {i}: {EXPERIMENTS[i].__doc__.splitlines()[0]}", file=sys.stderr)
        EXPERIMENTS[i](ctx)
        timings[i] = time.time() - t0
    info = {"command": "python -m ee_cuda.repro " + " ".join(shlex.quote(x) for x in (argv if argv is not None
                                                                                        else sys.argv[1:])),
            "started_utc": datetime.datetime.fromtimestamp(started, datetime.timezone.utc)
            .isoformat(timespec="seconds"),
            "wall_seconds": time.time() - started, "seconds": timings, "experiments": todo,
            "paired": True, "seeds": cfg.main_seeds, "main_loss": cfg.main_loss,
            "seed_groups": _seed_groups(cfg, todo),
            "datasets": {cfg.dataset: ctx.dataset().describe()},
            "runs": len(merge_requests(cfg.requests(todo))), "runs_trained": len(trained), "jobs": jobs,
            "config": cfg.to_json(), "build_info": build_info(), "torch": torch.__version__,
            "threads_per_job": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "python": platform.python_version(), "platform": platform.platform(), "device": cfg.device,
            "device_name": torch.cuda.get_device_name() if cfg.device.startswith("cuda") else platform.processor()}
    if earlier:
        # the top level describes the folder (every experiment in it, their runs, the configuration; the
        # latest environment); "invocations" holds what each invocation did and which experiments it wrote
        union = sorted({e for r in earlier for e in r["experiments"]} | set(todo))
        per_invocation = ("command", "started_utc", "wall_seconds", "seconds", "runs_trained", "jobs")
        info = {**{k: v for k, v in info.items() if k not in per_invocation}, "experiments": union,
                "seed_groups": _seed_groups(cfg, union), "runs": len(merge_requests(cfg.requests(union))),
                "invocations": earlier + [info]}
    with open(os.path.join(a.out, "run_info.json"), "w") as f:
        json.dump(info, f, indent=1)
    path = write_report(a.out)
    print(f"[ee_cuda.repro] wrote {path} in {(time.time() - started) / 60:.1f} min", file=sys.stderr)
    return path
