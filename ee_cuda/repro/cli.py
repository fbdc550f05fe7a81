"""Reproduce the paper's experiments (docs/design.md §11) offline and write a report.

    python -m ee_cuda.repro                 # default configuration, ~8 min on 2 idle CPU cores
    python -m ee_cuda.repro --full          # larger configuration (more seeds, epochs, n values)
    python -m ee_cuda.repro --datasets fonts --losses triplet ms --n 4 --epochs 10 --device cuda

Writes ``expN_*.json`` and ``expN_*.png`` for experiments 1-8, ``run_info.json`` and ``report.md`` into
``--out``; trained models, finished-run checkpoints and the rendered font cache go to ``--work-dir``
(default ``<out>/_work``), so an interrupted run resumes where it stopped. Every number in
``report.md`` is read from the JSON files by ``write_report``; rerun it alone with ``--report-only``.
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
from .experiments import EXPERIMENTS, Context, ReproConfig
from .report import write_report
from .train import LOSSES

__all__ = ["main", "parse_args", "config_from_args"]


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m ee_cuda.repro", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="out/reproduce", help="output folder for report.md, JSON and PNG files")
    p.add_argument("--work-dir", default=None, help="checkpoints and caches (default: <out>/_work)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="the full configuration (5 seeds, longer training)")
    size.add_argument("--tiny", action="store_true", help="a seconds-long smoke configuration (for tests)")
    p.add_argument("--datasets", nargs="+", choices=("digits", "fonts"), help="datasets (default: both)")
    p.add_argument("--losses", nargs="+", choices=sorted(LOSSES), help="losses (default: all five)")
    p.add_argument("--n", type=int, help="synthetic points per pair for 'with EE' (default 2)")
    p.add_argument("--epochs", type=int, help="epochs for every dataset")
    p.add_argument("--iters", type=int, help="iterations per epoch for every dataset")
    p.add_argument("--seeds", type=int, help="number of seeds for the main table (default 3)")
    p.add_argument("--n-sweep", type=int, nargs="+", help="values of n for experiment 4")
    p.add_argument("--device", default="auto", help="auto (default: CUDA when present, else CPU), cpu or cuda")
    p.add_argument("--experiments", type=int, nargs="+", choices=sorted(EXPERIMENTS), help="subset of 1-8")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: on a shared machine more threads are far slower; 0 = torch's choice)")
    p.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")
    p.add_argument("--report-only", action="store_true", help="only rewrite report.md from the JSON in --out")
    return p.parse_args(argv)


def config_from_args(a) -> ReproConfig:
    kw = {}
    if a.datasets:
        kw["datasets"] = tuple(a.datasets)
    if a.losses:
        kw["losses"] = tuple(a.losses)
    if a.n is not None:
        if a.n < 1:
            raise SystemExit("--n must be >= 1 (0 is the plain loss, always included)")
        kw["n_inner"] = a.n
    if a.seeds is not None:
        kw["seeds"] = tuple(range(a.seeds))
    if a.n_sweep:
        kw["n_sweep"] = tuple(a.n_sweep)
    kw["device"] = a.device
    cfg = ReproConfig.full(**kw) if a.full else ReproConfig.tiny(**kw) if a.tiny else ReproConfig(**kw)
    if a.epochs is not None:
        cfg.epochs = {d: a.epochs for d in ("digits", "fonts")}
    if a.iters is not None:
        cfg.iters_per_epoch = {d: a.iters for d in ("digits", "fonts")}
    if cfg.ablation_dataset not in cfg.datasets:
        cfg.ablation_dataset = cfg.datasets[-1]
    if cfg.ablation_loss not in cfg.losses:
        cfg.ablation_loss = cfg.losses[0]
    cfg.occlusion_losses = tuple(lo for lo in cfg.occlusion_losses if lo in cfg.losses) or (cfg.losses[0],)
    cfg.cost_losses = tuple(lo for lo in cfg.cost_losses if lo in cfg.losses) or (cfg.losses[0],)
    if cfg.n_inner not in cfg.n_sweep:
        cfg.n_sweep = tuple(sorted(set(cfg.n_sweep) | {cfg.n_inner}))
    return cfg


def main(argv=None) -> str:
    a = parse_args(argv)
    if a.report_only:
        return write_report(a.out)
    if a.threads:
        torch.set_num_threads(a.threads)
    cfg = config_from_args(a)
    ctx = Context(cfg, a.out, a.work_dir, progress=not a.no_progress)
    started = time.time()
    todo = a.experiments or sorted(EXPERIMENTS)
    timings = {}
    for i in todo:
        t0 = time.time()
        print(f"[ee_cuda.repro] experiment {i}: {EXPERIMENTS[i].__doc__.splitlines()[0]}", file=sys.stderr)
        EXPERIMENTS[i](ctx)
        timings[i] = time.time() - t0
    info = {"command": "python -m ee_cuda.repro " + " ".join(shlex.quote(x) for x in (argv if argv is not None
                                                                                        else sys.argv[1:])),
            "started_utc": datetime.datetime.fromtimestamp(started, datetime.timezone.utc).isoformat(timespec="seconds"),
            "wall_seconds": time.time() - started, "experiment_seconds": timings, "experiments": todo,
            "config": cfg.to_json(), "build_info": build_info(), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "device": cfg.device,
            "device_name": torch.cuda.get_device_name() if cfg.device.startswith("cuda") else platform.processor()}
    with open(os.path.join(a.out, "run_info.json"), "w") as f:
        json.dump(info, f, indent=1)
    path = write_report(a.out)
    print(f"[ee_cuda.repro] wrote {path} in {info['wall_seconds'] / 60:.1f} min", file=sys.stderr)
    return path
