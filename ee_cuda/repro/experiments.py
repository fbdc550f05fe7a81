"""The paper's experiments (docs/design.md §11, experiments 1-8) on the offline datasets of ``ee_cuda.repro.data``,
and experiment 9 (EE with a memory bank, beyond the paper).

Every comparison is paired (``ee_cuda.repro.stats``): the variants of one seed share the network's
initialization and batches, and a verdict is drawn from the per-seed differences after Holm's correction
over the comparisons of its table. ``ReproConfig.requests`` lists every run the experiments read, so
``Context.prefetch`` can train them first, in parallel processes; every experiment ``expN_*(ctx) -> dict``
then reads its runs and writes ``expN_*.json`` (numbers, with the per-seed differences) and ``expN_*.png``
into ``ctx.out_dir``. ``ee_cuda.repro.cli`` chains them and writes ``report.md`` from the JSON files only.
"""
from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import multiprocessing
import os
import sys
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import build_info, metrics, use_backend
from .data import load_dataset, occlude
from .stats import holm, paired, verdict
from .train import (LOSS_TITLES, RunConfig, at_checkpoint, embed, load_model, load_result, make_loss,
                    resolve_device, selection_between, train_run)

__all__ = ["ReproConfig", "Context", "EXPERIMENTS", "merge_requests", "exp1_losses", "exp2_synthetic_labels",
           "exp3_l2_norm", "exp4_n_sweep", "exp5_selection_ratio", "exp6_hard_negative_heatmap", "exp7_occlusion",
           "exp8_cost", "exp9_memory_bank", "in_batch_reference"]

METRIC_KEYS = ("nmi", "f1", "recall@1", "recall@2", "recall@4", "recall@8")


@dataclass
class ReproConfig:
    """What ``python -m ee_cuda.repro`` runs. The defaults are the quick configuration (about 17 minutes on
    2 CPU cores); ``full()`` is the larger one, ``tiny()`` a seconds-long one for tests.

    The main comparison is ``main_loss`` (HPHN triplet with the official margin 1e-5, batches of 8 classes x
    16 images, n = 2, L2-normalized synthetic points) over ``main_seeds`` paired seeds, evaluated at
    ``checkpoints``; the other losses keep their library defaults and run ``other_seeds`` seeds to
    ``other_checkpoints``. The ablations (experiments 3-6) vary the main loss on its first
    ``ablation_seeds`` seeds up to ``ablation_checkpoints``. Experiment 9 trains the main loss plain and with
    EE, both with a memory bank of ``memory_size`` rows (objective: in-batch loss + ``memory_weight`` x memory
    loss), over ``memory_seeds`` seeds (None: ``main_seeds``) to ``memory_checkpoints`` (None: ``checkpoints``).
    ``default_experiments`` are those a run without ``--experiments`` runs: experiment 9 is optional in the
    default configuration and part of ``full()`` and ``tiny()``."""
    dataset: str = "glyphs"
    losses: tuple = ("hphn", "triplet", "lifted", "npair", "ms")
    main_loss: str = "hphn"
    loss_options: dict = field(default_factory=lambda: {"hphn": {"margin": 1e-5}})
    n_inner: int = 2                     # synthetic points per pair for "with EE"
    main_seeds: int = 8
    checkpoints: tuple = (100, 250, 500, 1000)
    other_seeds: int = 3
    other_checkpoints: tuple = (50, 100, 250)
    ablation_seeds: int = 3
    ablation_checkpoints: tuple = (100, 250, 500)
    n_sweep: tuple = (0, 1, 2, 4, 8)
    occlusion_fractions: tuple = (0.0, 0.25, 0.375, 0.5)
    cost_ns: tuple = (0, 1, 2, 4, 8)
    cost_losses: tuple = ("hphn", "triplet")
    cost_iters: int = 3
    batch: tuple = (8, 16)               # P classes x K images
    width: int = 16
    embedding_dim: int = 64
    lr: float = 1e-3
    glyph_classes: int | None = None     # None: every glyph class
    glyph_per_class: int = 16
    device: str = "cpu"
    data_id: str = ""                    # the dataset's fingerprint, set by Context
    # experiment 9: 1024 rows = the last 8 batches of 128 (64 class draws of the 246 training classes, a
    # quarter of the 3936 training images), so no memory row is more than 7 steps stale
    memory_size: int = 1024
    memory_weight: float = 1.0
    memory_seeds: int | None = None      # None: main_seeds
    memory_checkpoints: tuple | None = None  # None: checkpoints
    default_experiments: tuple = (1, 2, 3, 4, 5, 6, 7, 8)

    @classmethod
    def full(cls, **kw) -> "ReproConfig":
        base = dict(main_seeds=10, checkpoints=(100, 250, 500, 1000, 2000), other_seeds=5,
                    other_checkpoints=(100, 250, 500, 1000), ablation_seeds=5,
                    ablation_checkpoints=(100, 250, 500, 1000),
                    n_sweep=(0, 1, 2, 4, 8, 16), occlusion_fractions=(0.0, 0.125, 0.25, 0.375, 0.5, 0.625),
                    cost_ns=(0, 1, 2, 4, 8, 16), cost_iters=5, default_experiments=tuple(range(1, 10)))
        base.update(kw)
        return cls(**base)

    @classmethod
    def tiny(cls, **kw) -> "ReproConfig":
        # the ablations' checkpoints run past the main ones and interleave with them, so runs merge
        base = dict(losses=("hphn", "triplet"), main_seeds=3, checkpoints=(2, 4, 6), other_seeds=2,
                    other_checkpoints=(2, 4, 6), ablation_seeds=2, ablation_checkpoints=(3, 6, 8), n_sweep=(0, 1, 2),
                    occlusion_fractions=(0.0, 0.5), cost_ns=(0, 2), cost_iters=2, width=4, embedding_dim=16,
                    glyph_classes=24, glyph_per_class=4, batch=(4, 4), memory_size=32,
                    default_experiments=tuple(range(1, 10)))
        base.update(kw)
        return cls(**base)

    def run_config(self, loss: str, n_inner: int, seed: int, l2_norm: bool = True, memory: bool = False) -> RunConfig:
        P, K = self.batch
        return RunConfig(dataset=self.dataset, loss=loss, n_inner=n_inner, l2_norm=l2_norm, seed=seed, P=P, K=K,
                         lr=self.lr, embedding_dim=self.embedding_dim, width=self.width,
                         loss_options=dict(self.loss_options.get(loss, {})), device=self.device,
                         data_id=self.data_id, memory_size=self.memory_size if memory else 0,
                         memory_weight=self.memory_weight if memory else 1.0)

    def memory_seed_list(self) -> list:
        return list(range(self.main_seeds if self.memory_seeds is None else self.memory_seeds))

    def memory_checkpoint_list(self) -> list:
        return list(self.checkpoints if self.memory_checkpoints is None else self.memory_checkpoints)

    def seeds_of(self, loss: str) -> list:
        return list(range(self.main_seeds if loss == self.main_loss else self.other_seeds))

    def checkpoints_of(self, loss: str) -> list:
        return list(self.checkpoints if loss == self.main_loss else self.other_checkpoints)

    def ablation_seed_list(self) -> list:
        return list(range(min(self.ablation_seeds, self.main_seeds)))

    def tracked(self, loss: str, seed: int) -> bool:
        """Runs of the main loss on the ablation seeds record their hard negatives (experiments 2, 5, 6)."""
        return loss == self.main_loss and seed < self.ablation_seeds

    def requests(self, experiments=None) -> list:
        """Every ``(RunConfig, checkpoints, track)`` the ``experiments`` (default: all) read."""
        todo = set(experiments or self.default_experiments)
        out = []
        for loss in self.losses:
            for seed in self.seeds_of(loss):
                if todo & {1, 7} or (todo & {2, 6} and self.tracked(loss, seed)):
                    out += [(self.run_config(loss, n, seed), self.checkpoints_of(loss), self.tracked(loss, seed))
                            for n in (0, self.n_inner)]
        for seed in self.ablation_seed_list():
            if 3 in todo:
                out += [(self.run_config(self.main_loss, n, seed, l2_norm=l2), list(self.ablation_checkpoints), True)
                        for n, l2 in ((0, True), (self.n_inner, True), (self.n_inner, False))]
            if todo & {4, 5}:
                out += [(self.run_config(self.main_loss, n, seed), list(self.ablation_checkpoints), True)
                        for n in self.n_sweep]
        if 9 in todo:
            out += [(self.run_config(self.main_loss, n, seed, memory=True), self.memory_checkpoint_list(), False)
                    for seed in self.memory_seed_list() for n in (0, self.n_inner)]
        return out

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, d: dict) -> "ReproConfig":
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


def merge_requests(requests) -> dict:
    """``{key: (RunConfig, sorted checkpoints, track)}``: one run per key, covering every request of it."""
    merged = {}
    for rc, cps, track in requests:
        key = rc.key()
        if key in merged:
            _, old, tracked = merged[key]
            merged[key] = (rc, sorted(set(old) | set(cps)), tracked or track)
        else:
            merged[key] = (rc, sorted(set(cps)), bool(track))
    return merged


def _train_in_worker(cfg_json: dict, rc_json: dict, checkpoints, track: bool, work_dir: str, threads: int):
    torch.set_num_threads(threads)
    ctx = Context(ReproConfig.from_json(cfg_json), None, work_dir, progress=False)
    r = ctx.run(RunConfig(**rc_json), checkpoints, track)
    return r["key"], r["train_seconds"]


class Context:
    """Shared state of one reproduction: config, datasets, output and work folders, and a memo of runs
    (a run asked for twice, e.g. EE n=2 seed 0 in experiments 1, 3 and 4, is trained once, as long as the
    longest request; shorter requests read its earlier checkpoints)."""

    def __init__(self, cfg: ReproConfig, out_dir: str | None, work_dir: str | None = None, progress: bool = True):
        self.cfg, self.out_dir = cfg, out_dir
        self.work_dir = work_dir or os.path.join(out_dir, "_work")
        self.checkpoint_dir = os.path.join(self.work_dir, "checkpoints")
        self.progress = progress
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
        os.makedirs(self.work_dir, exist_ok=True)
        self.cfg.device = resolve_device(cfg.device)
        self._datasets, self._runs = {}, {}
        self.trained = []  # keys trained by this context (not read back)
        self._plan = {}
        self.cfg.data_id = self.dataset().fingerprint()

    def dataset(self, name: str | None = None):
        name = name or self.cfg.dataset
        if name not in self._datasets:
            kw = {}
            if name == "glyphs":
                kw = dict(n_classes=self.cfg.glyph_classes, per_class=self.cfg.glyph_per_class)
            self._datasets[name] = load_dataset(name, cache_dir=os.path.join(self.work_dir, "cache"), **kw)
        return self._datasets[name]

    def run(self, rc: RunConfig, checkpoints, track: bool = False) -> dict:
        """The result of ``rc`` evaluated at least at ``checkpoints`` (tracked if ``track``): from the memo,
        from disk, or trained now (to the longest schedule planned for it)."""
        key = rc.key()
        hit = self._runs.get(key)
        if hit is not None and set(checkpoints) <= set(hit["checkpoints"]) and (hit["tracked"] or not track):
            return hit
        if key in self._plan:
            _, planned, planned_track = self._plan[key]
            checkpoints, track = sorted(set(checkpoints) | set(planned)), track or planned_track
        hit = load_result(self.checkpoint_dir, rc, checkpoints, track)
        if hit is None:
            hit = train_run(rc, self.dataset(rc.dataset), checkpoints, track=track,
                            checkpoint_dir=self.checkpoint_dir, progress=self.progress)
            self.trained.append(key)
        self._runs[key] = hit
        return hit

    def prefetch(self, requests, jobs: int = 1, threads: int = 1) -> dict:
        """Train every run of ``requests`` not stored yet, ``jobs`` at a time in separate processes
        (``threads`` torch threads each); returns ``{key: training seconds}`` of the runs trained."""
        self._plan = merge_requests(requests)
        todo = [(rc, cps, tr) for rc, cps, tr in self._plan.values()
                if load_result(self.checkpoint_dir, rc, cps, tr) is None]
        todo.sort(key=lambda r: -max(r[1]))  # longest first: the pool ends together
        done = {}
        if not todo:
            return done
        if jobs <= 1:
            for rc, cps, tr in todo:
                done[rc.key()] = self.run(rc, cps, tr)["train_seconds"]
            return done
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(jobs, mp_context=spawn) as pool:
            futures = [pool.submit(_train_in_worker, self.cfg.to_json(), dataclasses.asdict(rc), cps, tr,
                                   self.work_dir, threads) for rc, cps, tr in todo]
            for i, f in enumerate(concurrent.futures.as_completed(futures), 1):
                key, seconds = f.result()
                done[key] = seconds
                self.trained.append(key)
                if self.progress:
                    print(f"[ee_cuda.repro] run {i}/{len(todo)} done: {key} ({seconds:.0f} s)", file=sys.stderr)
        return done

    def write(self, name: str, data: dict, fig=None) -> dict:
        data = {"experiment": name, **data}
        with open(os.path.join(self.out_dir, name + ".json"), "w") as f:
            json.dump(data, f, indent=1, default=_json_default)
        if fig is not None:
            fig.savefig(os.path.join(self.out_dir, name + ".png"), dpi=110, bbox_inches="tight")
            import matplotlib.pyplot as plt
            plt.close(fig)
        return data


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(type(o))


def _plt():
    import matplotlib
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return plt


def _mean_se(values):
    """Mean and standard error over seeds (``nan`` for one seed)."""
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), (float(a.std(ddof=1) / np.sqrt(len(a))) if len(a) > 1 else float("nan"))


def _same_footing(runs_a, runs_b, iteration) -> bool:
    """Whether every seed's two runs started from the same weights and saw the same batches up to
    ``iteration``."""
    return all(a["init_digest"] == b["init_digest"] and at_checkpoint(a, iteration)["batch_digest"]
               == at_checkpoint(b, iteration)["batch_digest"] for a, b in zip(runs_a, runs_b))


def _correct(comparisons: list) -> list:
    """Holm-adjust the ``p`` of every comparison of one table in place and add its verdict."""
    for c, p_adj in zip(comparisons, holm([c["p"] for c in comparisons])):
        c["p_holm"] = p_adj
        c["verdict"] = verdict(c["mean"], p_adj)
    return comparisons


def _compare(before: list, after: list, **labels) -> dict:
    """Paired ``after - before`` (per-seed values, same seed order) with the two means and its labels."""
    s = paired(before, after)
    return {**labels, "a_mean": float(np.mean(before)), "b_mean": float(np.mean(after)), **s}


def _tracked_at(run: dict, name: str, iterations) -> list:
    """The tracked statistic ``name`` of ``run`` at each of ``iterations`` (checkpoints of the run)."""
    return [run[name][run["checkpoints"].index(int(c))] for c in iterations]


def _ci_errorbar(ax, x, comps, **kw):
    """Mean paired difference (points) with its 95% t interval as asymmetric error bars."""
    m = np.array([100 * c["mean"] for c in comps])
    lo = np.array([100 * (c["mean"] - c["ci"][0]) if np.isfinite(c["ci"][0]) else 0 for c in comps])
    hi = np.array([100 * (c["ci"][1] - c["mean"]) if np.isfinite(c["ci"][1]) else 0 for c in comps])
    ax.errorbar(x, m, yerr=[lo, hi], capsize=3, marker="o", ms=4, **kw)
    ax.axhline(0, color="0.4", lw=0.8)


def _iteration_axis(ax, checkpoints, label="iterations"):
    """A log axis of iterations with a tick at every checkpoint and no other."""
    ax.set_xscale("log")
    ax.set_xticks(list(checkpoints), [str(c) for c in checkpoints], fontsize=7)
    ax.minorticks_off()
    ax.set_xlabel(label)


def _shared_ylim(axes, values, start=None, pad=2.0, floor=None):
    """One y-range for panels compared side by side: from ``start`` (or just below the smallest value, not
    below ``floor``); returns it, for the axis label to state."""
    v = np.asarray([x for x in values if np.isfinite(x)])
    lo = start if start is not None else (np.floor((v.min() - pad) / 5) * 5 if len(v) else 0)
    lo = max(lo, floor) if floor is not None else lo
    hi = np.ceil((v.max() + pad) / 5) * 5 if len(v) else 100
    for ax in axes:
        ax.set_ylim(lo, hi)
    return lo, hi


# ------------------------------------------------------------------------------------------ experiment 1

def _best(run, checkpoints) -> dict:
    """The evaluation of ``run`` with the highest R@1 among ``checkpoints`` (the first such, on ties)."""
    return max((at_checkpoint(run, c) for c in checkpoints), key=lambda c: c["recall@1"])


def _r1_curve(run, checkpoints) -> list:
    return [at_checkpoint(run, c)["recall@1"] for c in checkpoints]


def _seconds_per_100(runs) -> float:
    return 100 * float(np.mean([r["train_seconds"] / r["checkpoints"][-1] for r in runs]))


def exp1_losses(ctx: Context) -> dict:
    """Each loss with and without EE, paired over seeds, at every checkpoint; the last and the best
    checkpoint of each run (by R@1 on the test classes, as the official code reports)."""
    cfg = ctx.cfg
    runs, curves, final, best = {}, [], [], []
    for loss in cfg.losses:
        cps, seeds = cfg.checkpoints_of(loss), cfg.seeds_of(loss)
        for n in (0, cfg.n_inner):
            runs[loss, n] = [ctx.run(cfg.run_config(loss, n, s), cps, cfg.tracked(loss, s)) for s in seeds]
        plain, ee = runs[loss, 0], runs[loss, cfg.n_inner]
        for c in cps:
            a = [at_checkpoint(r, c)["recall@1"] for r in plain]
            b = [at_checkpoint(r, c)["recall@1"] for r in ee]
            curves.append(_compare(a, b, loss=loss, iteration=c))
        last = cps[-1]
        row = _compare([at_checkpoint(r, last)["recall@1"] for r in plain],
                       [at_checkpoint(r, last)["recall@1"] for r in ee], loss=loss, iteration=last)
        for k in METRIC_KEYS:
            pa, pb = [at_checkpoint(r, last)[k] for r in plain], [at_checkpoint(r, last)[k] for r in ee]
            row[k] = {"plain": _mean_se(pa), "ee": _mean_se(pb), "delta": paired(pa, pb)}
        row["same_batches"] = _same_footing(plain, ee, last)
        final.append(row)
        bp, be = [_best(r, cps) for r in plain], [_best(r, cps) for r in ee]
        best.append(_compare([b["recall@1"] for b in bp], [b["recall@1"] for b in be], loss=loss,
                             plain_best_at=[b["iteration"] for b in bp], ee_best_at=[b["iteration"] for b in be]))
    for table in (final, best):  # the curves are described, not tested: their last row is `final`
        _correct(table)
    per_seed = {loss: {"seeds": cfg.seeds_of(loss), "checkpoints": cfg.checkpoints_of(loss),
                       "plain_recall@1": [_r1_curve(r, cfg.checkpoints_of(loss)) for r in runs[loss, 0]],
                       "ee_recall@1": [_r1_curve(r, cfg.checkpoints_of(loss)) for r in runs[loss, cfg.n_inner]],
                       "seconds_per_100_iterations": {name: _seconds_per_100(runs[loss, n]) for name, n
                                                      in (("plain", 0), ("ee", cfg.n_inner))}}
                for loss in cfg.losses}

    plt = _plt()
    L = len(cfg.losses)
    fig, axes = plt.subplots(2, L, figsize=(3.2 * L, 6), squeeze=False, sharex="col")
    r1 = []
    for j, loss in enumerate(cfg.losses):
        cps = cfg.checkpoints_of(loss)
        for n, style, name in ((0, "--s", "plain"), (cfg.n_inner, "-o", f"EE (n={cfg.n_inner})")):
            m = [100 * np.mean([at_checkpoint(r, c)["recall@1"] for r in runs[loss, n]]) for c in cps]
            r1 += m
            axes[0][j].plot(cps, m, style, ms=4, label=name)
        axes[0][j].set_title(f"{LOSS_TITLES[loss]} ({len(cfg.seeds_of(loss))} seeds)", fontsize=9)
        _ci_errorbar(axes[1][j], cps, [c for c in curves if c["loss"] == loss], color="tab:red")
        _iteration_axis(axes[1][j], cps)
    lo, _ = _shared_ylim(axes[0], r1, floor=0)
    dlo, _ = _shared_ylim(axes[1], [100 * x for c in curves for x in c["ci"]] + [0.0])
    axes[0][0].set_ylabel(f"mean R@1 (%), axis from {lo:g}")
    axes[1][0].set_ylabel(f"EE − plain, R@1 points, axis from {dlo:g}\n(mean, 95% paired t interval)")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(f"{cfg.dataset}: R@1 on the test classes by checkpoint, paired seeds", fontsize=10)
    fig.tight_layout()
    return ctx.write("exp1_losses", {
        "dataset": ctx.dataset().describe(), "n_inner": cfg.n_inner, "main_loss": cfg.main_loss,
        "loss_options": cfg.loss_options, "correction": "holm", "alpha": 0.05, "metric": "recall@1",
        "curves": curves, "final": final, "best": best, "per_seed": per_seed}, fig)


# ------------------------------------------------------------------------------------------ experiment 2

def exp2_synthetic_labels(ctx: Context) -> dict:
    """Recall@1 of synthetic points (queries against originals, own endpoints excluded) vs originals, at
    every checkpoint, on the held-out classes, for the tracked plain and EE runs of the main loss."""
    cfg = ctx.cfg
    seeds, cps = cfg.ablation_seed_list(), cfg.checkpoints_of(cfg.main_loss)
    out = {}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for n, style, name, color in ((0, "--s", "plain", "tab:gray"), (cfg.n_inner, "-o", "EE", "tab:red")):
        rs = [ctx.run(cfg.run_config(cfg.main_loss, n, s), cps, True) for s in seeds]
        syn = np.array([[x["synthetic"] for x in _tracked_at(r, "synthetic_recall", cps)] for r in rs])
        org = np.array([[x["original"] for x in _tracked_at(r, "synthetic_recall", cps)] for r in rs])
        out[name] = {"n_probe": n or 2, "synthetic": syn.tolist(), "original": org.tolist(),
                     "difference": [paired(org[:, i], syn[:, i]) for i in range(len(cps))]}
        ax.plot(cps, 100 * syn.mean(0), style, color=color, label=f"synthetic ({name} model)")
        ax.plot(cps, 100 * org.mean(0), style, color=color, alpha=0.45, label=f"original ({name} model)")
    _iteration_axis(ax, cps)
    ax.set_ylim(0, 100)
    ax.set_ylabel("R@1 (%), axis from 0")
    ax.set_title(f"{LOSS_TITLES[cfg.main_loss]}: mean over {len(seeds)} seeds", fontsize=9)
    ax.legend(fontsize=7)
    return ctx.write("exp2_synthetic_labels", {"loss": cfg.main_loss, "seeds": seeds, "checkpoints": cps,
                                               "results": out}, fig)


# ------------------------------------------------------------------------------------------ experiment 3

def _ablation_runs(ctx, n, l2_norm=True):
    cfg = ctx.cfg
    return [ctx.run(cfg.run_config(cfg.main_loss, n, s, l2_norm), cfg.ablation_checkpoints,
                    cfg.tracked(cfg.main_loss, s)) for s in cfg.ablation_seed_list()]


def _r1(runs, iteration, key="recall@1"):
    return [at_checkpoint(r, iteration)[key] for r in runs]


def exp3_l2_norm(ctx: Context) -> dict:
    """EE with and without L2 normalization of the synthetic points, and the plain loss, paired."""
    cfg = ctx.cfg
    last = cfg.ablation_checkpoints[-1]
    variants = {"plain": _ablation_runs(ctx, 0), "EE, L2-normalized": _ablation_runs(ctx, cfg.n_inner),
                "EE, not normalized": _ablation_runs(ctx, cfg.n_inner, l2_norm=False)}
    rows = [{"variant": name, **{k: _mean_se(_r1(rs, last, k)) for k in METRIC_KEYS},
             "curve": [_mean_se(_r1(rs, c)) for c in cfg.ablation_checkpoints]} for name, rs in variants.items()]
    pairs = (("plain", "EE, L2-normalized"), ("plain", "EE, not normalized"),
             ("EE, not normalized", "EE, L2-normalized"))
    comps = _correct([_compare(_r1(variants[a], last), _r1(variants[b], last), a=a, b=b,
                               same_batches=_same_footing(variants[a], variants[b], last)) for a, b in pairs])
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for name, rs in variants.items():
        axes[0].plot(cfg.ablation_checkpoints, [100 * np.mean(_r1(rs, c)) for c in cfg.ablation_checkpoints],
                     "-o", ms=4, label=name)
    _iteration_axis(axes[0], cfg.ablation_checkpoints)
    lo, _ = _shared_ylim([axes[0]], [100 * np.mean(_r1(rs, c)) for rs in variants.values()
                                     for c in cfg.ablation_checkpoints], floor=0)
    axes[0].set_ylabel(f"mean R@1 (%), axis from {lo:g}")
    axes[0].legend(fontsize=7)
    _ci_errorbar(axes[1], range(len(comps)), comps, color="tab:red", ls="none")
    dlo, _ = _shared_ylim([axes[1]], [100 * x for c in comps for x in c["ci"]] + [0.0])
    axes[1].set_xticks(range(len(comps)), [f"{c['b']}\n− {c['a']}" for c in comps], fontsize=7)
    axes[1].set_ylabel(f"R@1 points at {last} iterations, axis from {dlo:g}\n(mean, 95% paired t interval)")
    fig.suptitle(f"{LOSS_TITLES[cfg.main_loss]}: L2 normalization of synthetic points "
                 f"({len(cfg.ablation_seed_list())} paired seeds)", fontsize=10)
    fig.tight_layout()
    return ctx.write("exp3_l2_norm", {"loss": cfg.main_loss, "seeds": cfg.ablation_seed_list(), "iteration": last,
                                      "checkpoints": list(cfg.ablation_checkpoints), "rows": rows,
                                      "comparisons": comps, "correction": "holm"}, fig)


# ------------------------------------------------------------------------------------------ experiment 4

def exp4_n_sweep(ctx: Context) -> dict:
    """Number of synthetic points n (0 = plain loss): every n > 0 against n = 0, paired."""
    cfg = ctx.cfg
    last = cfg.ablation_checkpoints[-1]
    runs = {n: _ablation_runs(ctx, n) for n in cfg.n_sweep}
    rows = [{"n_inner": n, **{k: _mean_se(_r1(rs, last, k)) for k in METRIC_KEYS}} for n, rs in runs.items()]
    comps = _correct([_compare(_r1(runs[0], last), _r1(runs[n], last), n_inner=n,
                               same_batches=_same_footing(runs[0], runs[n], last)) for n in cfg.n_sweep if n > 0])
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    ns = list(cfg.n_sweep)
    for k, label in (("recall@1", "R@1"), ("nmi", "NMI"), ("f1", "F1")):
        axes[0].plot(range(len(ns)), [100 * r[k][0] for r in rows], marker="o", ms=4, label=label)
    axes[0].set_xticks(range(len(ns)), [str(n) for n in ns])
    axes[0].set_ylim(0, 100)
    axes[0].set_ylabel("% (mean over seeds), axis from 0")
    axes[0].set_xlabel("synthetic points per pair n (0 = no EE)")
    axes[0].legend(fontsize=7)
    _ci_errorbar(axes[1], [ns.index(c["n_inner"]) for c in comps], comps, color="tab:red", ls="none")
    dlo, _ = _shared_ylim([axes[1]], [100 * x for c in comps for x in c["ci"]] + [0.0])
    axes[1].set_xticks(range(len(ns)), [str(n) for n in ns])
    axes[1].set_xlim(-0.5, len(ns) - 0.5)
    axes[1].set_xlabel("synthetic points per pair n")
    axes[1].set_ylabel(f"R@1: n − plain, points, axis from {dlo:g}\n(mean, 95% paired t interval)")
    fig.suptitle(f"{LOSS_TITLES[cfg.main_loss]} at {last} iterations, {len(cfg.ablation_seed_list())} paired seeds",
                 fontsize=10)
    fig.tight_layout()
    return ctx.write("exp4_n_sweep", {"loss": cfg.main_loss, "seeds": cfg.ablation_seed_list(), "iteration": last,
                                      "rows": rows, "comparisons": comps, "correction": "holm"}, fig)


# ------------------------------------------------------------------------------------------ experiment 5

def exp5_selection_ratio(ctx: Context) -> dict:
    """Share of the hard negatives the main loss chooses in training that involve a synthetic point,
    between consecutive checkpoints, for every n > 0 of the sweep (mean ± SE over the tracked seeds)."""
    cfg = ctx.cfg
    cps = list(cfg.ablation_checkpoints)
    curves = {}
    for n in cfg.n_sweep:
        if n == 0:
            continue
        ratios = np.array([selection_between(r, cps) for r in _ablation_runs(ctx, n)])
        curves[str(n)] = {"per_seed": ratios.tolist(), "mean": ratios.mean(0).tolist(),
                          "se": [_mean_se(ratios[:, i])[1] for i in range(len(cps))]}
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, max(len(curves), 1)))
    for (n, c), color in zip(curves.items(), colors):
        ax.errorbar(cps, 100 * np.asarray(c["mean"]), yerr=100 * np.asarray(c["se"]), marker="o", ms=3, capsize=2,
                    color=color, label=f"n = {n}")
    _iteration_axis(ax, cps, "iterations (ratio over the batches since the previous checkpoint)")
    ax.set_ylabel("hard negatives with a synthetic point (%)\nmean ± SE over seeds, axis from 0")
    ax.set_ylim(0, 100)
    ax.set_title(f"Selection ratio of synthetic points ({LOSS_TITLES[cfg.main_loss]})", fontsize=9)
    ax.legend(fontsize=7)
    return ctx.write("exp5_selection_ratio", {"loss": cfg.main_loss, "seeds": cfg.ablation_seed_list(),
                                              "checkpoints": cps, "curves": curves}, fig)


# ------------------------------------------------------------------------------------------ experiment 6

def exp6_hard_negative_heatmap(ctx: Context) -> dict:
    """Class x class mean hard-negative distance on a fixed probe batch of 10 training classes, at the
    first, a middle and the last checkpoint, without and with EE (seed 0), each model searched with its
    own n. Diagonal: mean positive-pair distance. The summary averages the tracked seeds, and also
    measures both models among the original points only (n = 0), where their distances compare."""
    cfg = ctx.cfg
    cps = cfg.checkpoints_of(cfg.main_loss)
    seeds = cfg.ablation_seed_list()
    runs = {name: [ctx.run(cfg.run_config(cfg.main_loss, n, s), cps, True) for s in seeds]
            for name, n in (("plain", 0), ("EE", cfg.n_inner))}
    shown = sorted({0, (len(cps) - 1) // 2, len(cps) - 1})
    mats = {name: [_tracked_at(r, "class_distances", cps) for r in rs] for name, rs in runs.items()}
    summary = {}
    for name, rs in runs.items():
        for search, field_ in (("own n", "class_distances"), ("originals only", "class_distances_originals")):
            per_seed = [[np.asarray(m) for m in _tracked_at(r, field_, cps)] for r in rs]
            off = np.array([[m[~np.eye(len(m), dtype=bool)].mean() for m in ms] for ms in per_seed])
            closest = np.array([[m[~np.eye(len(m), dtype=bool)].min() for m in ms] for ms in per_seed])
            pos = np.array([[np.diag(m).mean() for m in ms] for ms in per_seed])
            summary[f"{name}, {search}"] = {"mean_hard_negative": off.mean(0).tolist(),
                                            "closest_pair": closest.mean(0).tolist(),
                                            "mean_positive": pos.mean(0).tolist()}
    plt = _plt()
    fig, axes = plt.subplots(2, len(shown), figsize=(3.2 * len(shown), 6), squeeze=False)
    vmax = max(float(np.max(mats[name][0][e])) for name in runs for e in shown)
    for i, (name, rs) in enumerate(runs.items()):
        for j, e in enumerate(shown):
            im = axes[i][j].imshow(np.asarray(mats[name][0][e]), cmap="viridis", vmin=0, vmax=vmax)
            axes[i][j].set_title(f"{name}, {cps[e]} iterations", fontsize=9)
            names = rs[0].get("probe_classes", [])
            axes[i][j].set_xticks(range(len(names)), names, fontsize=5, rotation=90)
            axes[i][j].set_yticks(range(len(names)), names, fontsize=5)
    fig.colorbar(im, ax=axes, shrink=0.7, label="distance (off-diagonal: hard negative), scale from 0")
    return ctx.write("exp6_hard_negative_heatmap", {
        "loss": cfg.main_loss, "seed": seeds[0], "summary_seeds": seeds, "checkpoints": cps,
        "checkpoints_shown": [cps[e] for e in shown], "probe_classes": runs["plain"][0].get("probe_classes"),
        "summary": summary, "matrices": {name: [mats[name][0][e] for e in shown] for name in runs}}, fig)


# ------------------------------------------------------------------------------------------ experiment 7

def exp7_occlusion(ctx: Context) -> dict:
    """Recall@1 on held-out classes when a square patch (side = fraction of the image side) of every test
    image is zeroed at a random position; the models of experiment 1 at their last checkpoint, EE vs plain
    paired per seed. The unoccluded column repeats experiment 1's test, so Holm's family here is the
    occluded columns."""
    cfg = ctx.cfg
    d = ctx.dataset()
    occluded = {f: occlude(d.x_test, f, seed=1000 + i) for i, f in enumerate(cfg.occlusion_fractions)}
    yt = d.y_test.to(cfg.device)
    comps, means = [], []
    for loss in cfg.losses:
        per = {}
        for n in (0, cfg.n_inner):
            per[n] = []
            for s in cfg.seeds_of(loss):
                cps = cfg.checkpoints_of(loss)
                run = ctx.run(cfg.run_config(loss, n, s), cps, cfg.tracked(loss, s))
                model = load_model(run, cps[-1]).to(cfg.device)
                per[n].append([metrics.recall_at_k(embed(model, occluded[f], cfg.device), yt, (1,))[1]
                               for f in cfg.occlusion_fractions])
            means.append({"loss": loss, "ee": n > 0, "per_seed": per[n],
                          "mean": np.mean(per[n], 0).tolist()})
        a, b = np.asarray(per[0]), np.asarray(per[cfg.n_inner])
        comps += [_compare(a[:, i].tolist(), b[:, i].tolist(), loss=loss, fraction=f, iteration=cps[-1])
                  for i, f in enumerate(cfg.occlusion_fractions)]
    _correct([c for c in comps if c["fraction"] > 0])
    for c in comps:
        if c["fraction"] == 0:
            c.update(p_holm=float("nan"), verdict="experiment 1")
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.9, len(cfg.losses)))
    fr = 100 * np.asarray(cfg.occlusion_fractions)
    for loss, color in zip(cfg.losses, colors):
        for m in (m for m in means if m["loss"] == loss):
            axes[0].plot(fr, 100 * np.asarray(m["mean"]), "-o" if m["ee"] else "--s", ms=3, color=color,
                         label=f"{LOSS_TITLES[loss]}{' +EE' if m['ee'] else ''}")
        cs = [c for c in comps if c["loss"] == loss]
        _ci_errorbar(axes[1], fr + 0.6 * (list(cfg.losses).index(loss) - len(cfg.losses) / 2), cs, color=color,
                     label=LOSS_TITLES[loss], ls="none")
    axes[0].set_ylim(0, 100)
    axes[0].set_ylabel("mean R@1 (%), axis from 0")
    dlo, _ = _shared_ylim([axes[1]], [100 * x for c in comps for x in c["ci"]] + [0.0])
    axes[1].set_ylabel(f"EE − plain, R@1 points, axis from {dlo:g}\n(mean, 95% paired t interval)")
    for ax in axes:
        ax.set_xlabel("occluded patch side (% of image side)")
        ax.legend(fontsize=6)
    fig.tight_layout()
    return ctx.write("exp7_occlusion", {"fractions": list(cfg.occlusion_fractions), "means": means,
                                        "comparisons": comps, "correction": "holm"}, fig)


# ------------------------------------------------------------------------------------------ experiment 8

def _saved_tensor_bytes(fn) -> int:
    """Bytes of the distinct storages autograd saves for backward while ``fn()`` runs its forward."""
    seen = {}

    def pack(t):
        try:
            st = t.untyped_storage()
            seen[st.data_ptr()] = max(seen.get(st.data_ptr(), 0), st.nbytes())
        except Exception:  # pragma: no cover
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, int(sum(seen.values()))


def exp8_cost(ctx: Context) -> dict:
    """Training time and memory of one step by n (the main batch shape, fresh network), with the fused
    ops and with the plain pure-PyTorch reference (materialized points and distances).

    Time: seconds per training iteration (forward, loss, backward, Adam step), median over ``cost_iters``
    after one warm-up; and the loss alone (forward + backward on fixed embeddings). Memory: bytes autograd
    keeps for backward (network + loss, and loss alone; transient workspace inside a kernel is not
    counted), and on CUDA the peak allocated memory of a step.
    """
    from .data import PKSampler

    cfg = ctx.cfg
    d = ctx.dataset()
    device = cfg.device
    P, K = cfg.batch
    batch = next(iter(PKSampler(d.y_train, min(P, int(d.y_train.unique().numel())), K, 1, seed=0)))
    xb, yb = d.x_train[batch].to(device), d.y_train[batch].to(device)
    fused_ok = bool(build_info().get("cuda" if device.startswith("cuda") else "cpu"))
    backends = ("fused", "reference") if fused_ok else ("reference",)
    rows = []
    for backend in backends:
        for loss_name in cfg.cost_losses:
            for n in cfg.cost_ns:
                with use_backend(backend):
                    rows.append(_cost_row(cfg, loss_name, n, xb, yb, device, backend))
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    colors = plt.get_cmap("viridis")(np.linspace(0, 0.8, len(cfg.cost_losses)))
    for c, loss_name in enumerate(cfg.cost_losses):
        for backend in backends:
            rr = [r for r in rows if r["loss"] == loss_name and r["backend"] == backend]
            ns = [r["n_inner"] for r in rr]
            style = "-o" if backend == "fused" else "--s"
            lab = f"{LOSS_TITLES[loss_name]} ({backend})"
            axes[0].plot(ns, [1e3 * r["seconds_per_iteration"] for r in rr], style, color=colors[c], label=lab)
            axes[1].plot(ns, [r["loss_ms"] for r in rr], style, color=colors[c], label=lab)
            axes[2].plot(ns, [r["saved_bytes_loss"] / 2 ** 20 for r in rr], style, color=colors[c], label=lab)
    axes[0].set_ylabel("training step (ms), axis from 0")
    axes[0].set_ylim(bottom=0)
    axes[1].set_ylabel("loss forward + backward (ms), log axis")
    axes[2].set_ylabel("loss: memory saved for backward (MiB), log axis")
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("synthetic points per pair n (0 = no EE)")
        ax.set_xticks(list(cfg.cost_ns))
        ax.legend(fontsize=7)
    fig.suptitle(f"Cost by n on {device} (batch {len(batch)}, {cfg.dataset}); solid: fused ops, dashed: reference")
    return ctx.write("exp8_cost", {"device": device, "backends": list(backends), "threads": torch.get_num_threads(),
                                   "build_info": build_info(), "rows": rows}, fig)


def _cost_row(cfg, loss_name, n, xb, yb, device, backend) -> dict:
    from .models import EmbeddingNet

    torch.manual_seed(0)
    model = EmbeddingNet(cfg.embedding_dim, cfg.width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = make_loss(loss_name, n, **cfg.loss_options.get(loss_name, {}))
    step_times, loss_times = [], []
    peak = None
    for it in range(cfg.cost_iters + 1):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            loss, saved = _saved_tensor_bytes(lambda: loss_fn(model(xb), yb))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated()
        t1 = time.perf_counter()
        emb = model(xb).detach().requires_grad_()
        t2 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            lonly, loss_saved = _saved_tensor_bytes(lambda: loss_fn(emb, yb))
        lonly.backward()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t3 = time.perf_counter()
        if it > 0:
            step_times.append(t1 - t0)
            loss_times.append(t3 - t2)
    return {"loss": loss_name, "n_inner": n, "backend": backend, "batch": int(len(yb)),
            "seconds_per_iteration": float(np.median(step_times)), "loss_ms": 1e3 * float(np.median(loss_times)),
            "saved_bytes_step": saved, "saved_bytes_loss": loss_saved, "cuda_peak_bytes": peak}


# ------------------------------------------------------------------------------------------ experiment 9

def in_batch_reference(out_dir: str | None, loss: str, n_inner: int, dataset: str) -> dict:
    """Experiment 1's in-batch comparison of ``loss`` from ``exp1_losses.json`` in ``out_dir``, when it is
    there and of the same loss, n and dataset: ``{iteration: {"comparison": its curve entry (Δ, SE, p),
    "plain": mean R@1, "ee": mean R@1}}``; ``{}`` otherwise. A reference beside experiment 9, not a test."""
    path = os.path.join(out_dir, "exp1_losses.json") if out_dir else None
    if not path or not os.path.exists(path):
        return {}
    with open(path) as f:
        e1 = json.load(f)
    if e1.get("n_inner") != n_inner or e1.get("dataset", {}).get("name") != dataset or loss not in e1["per_seed"]:
        return {}
    return {c["iteration"]: {"comparison": c, "plain": c["a_mean"], "ee": c["b_mean"]}
            for c in e1["curves"] if c["loss"] == loss}


def exp9_memory_bank(ctx: Context) -> dict:
    """EE with a memory bank: the main loss plain and with EE, both with a cross-batch memory (XBM), paired.

    Each run's objective is ``loss(batch) + memory_weight * loss(batch, negatives from the memory)``
    (``ee_cuda.losses.CrossBatchMemory`` of ``memory_size`` rows, empty at iteration 0, no warm-up, the
    current batch enqueued before its loss); the two variants of a seed share the initialization and the
    batches (and with experiment 1's runs of that seed). Paired ΔR@1 (EE − plain) at every checkpoint with
    uncorrected p (the curve); the tests are the last checkpoint and each run's best one, Holm over the
    two. Experiment 1's in-batch Δ of the same loss, when its JSON is in the output folder, is drawn
    beside it for reference."""
    cfg = ctx.cfg
    cps, seeds = cfg.memory_checkpoint_list(), cfg.memory_seed_list()
    runs = {n: [ctx.run(cfg.run_config(cfg.main_loss, n, s, memory=True), cps) for s in seeds]
            for n in (0, cfg.n_inner)}
    plain, ee = runs[0], runs[cfg.n_inner]
    curves = [_compare(_r1(plain, c), _r1(ee, c), iteration=c, same_batches=_same_footing(plain, ee, c))
              for c in cps]
    last = cps[-1]
    final = _compare(_r1(plain, last), _r1(ee, last), test="last checkpoint", iteration=last,
                     same_batches=_same_footing(plain, ee, last))
    for k in METRIC_KEYS:
        pa, pb = _r1(plain, last, k), _r1(ee, last, k)
        final[k] = {"plain": _mean_se(pa), "ee": _mean_se(pb), "delta": paired(pa, pb)}
    bp, be = [_best(r, cps) for r in plain], [_best(r, cps) for r in ee]
    best = _compare([b["recall@1"] for b in bp], [b["recall@1"] for b in be], test="best checkpoint",
                    plain_best_at=[b["iteration"] for b in bp], ee_best_at=[b["iteration"] for b in be])
    _correct([final, best])
    reference = in_batch_reference(ctx.out_dir, cfg.main_loss, cfg.n_inner, cfg.dataset)

    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    r1 = []
    for rs, style, color, name in ((plain, "--s", "tab:blue", "plain + memory"),
                                   (ee, "-o", "tab:red", f"EE (n={cfg.n_inner}) + memory")):
        m = [100 * np.mean(_r1(rs, c)) for c in cps]
        r1 += m
        axes[0].plot(cps, m, style, ms=4, color=color, label=name)
    ref_cps = [c for c in cps if c in reference]
    if ref_cps:
        for key, style, name in (("plain", "--s", "plain, in-batch (exp. 1)"), ("ee", "-o", "EE, in-batch (exp. 1)")):
            m = [100 * reference[c][key] for c in ref_cps]
            r1 += m
            axes[0].plot(ref_cps, m, style, ms=3, color="0.6", alpha=0.8, label=name)
    lo, _ = _shared_ylim([axes[0]], r1, floor=0)
    axes[0].set_ylabel(f"mean R@1 (%), axis from {lo:g}")
    axes[0].legend(fontsize=7)
    _iteration_axis(axes[0], cps)
    _ci_errorbar(axes[1], cps, curves, color="tab:red", label="with memory")
    diffs = [100 * x for c in curves for x in c["ci"]] + [0.0]
    if ref_cps:
        ref_comps = [reference[c]["comparison"] for c in ref_cps]
        _ci_errorbar(axes[1], [c * 1.06 for c in ref_cps], ref_comps, color="0.6", label="in-batch (exp. 1)")
        diffs += [100 * x for c in ref_comps for x in c["ci"]]
        axes[1].legend(fontsize=7)
    dlo, _ = _shared_ylim([axes[1]], diffs)
    _iteration_axis(axes[1], cps)
    axes[1].set_ylabel(f"EE − plain, R@1 points, axis from {dlo:g}\n(mean, 95% paired t interval)")
    fig.suptitle(f"{LOSS_TITLES[cfg.main_loss]} with a memory bank of {cfg.memory_size} rows "
                 f"({len(seeds)} paired seeds)", fontsize=10)
    fig.tight_layout()
    P, K = cfg.batch
    return ctx.write("exp9_memory_bank", {
        "loss": cfg.main_loss, "loss_options": cfg.loss_options.get(cfg.main_loss, {}), "n_inner": cfg.n_inner,
        "memory_size": cfg.memory_size, "memory_weight": cfg.memory_weight, "batch_rows": P * K,
        "memory_start": "empty at iteration 0 (no warm-up)",
        "objective": f"loss(batch) + {cfg.memory_weight:g} * loss(batch, negatives from the memory)",
        "seeds": seeds, "checkpoints": cps, "correction": "holm", "family": ["last checkpoint", "best checkpoint"],
        "curves": curves, "final": final, "best": best,
        "per_seed": {"plain_recall@1": [_r1_curve(r, cps) for r in plain],
                     "ee_recall@1": [_r1_curve(r, cps) for r in ee],
                     "init_digests": [r["init_digest"] for r in plain],
                     "batch_digests": [at_checkpoint(r, last)["batch_digest"] for r in plain]},
        "seconds_per_100_iterations": {"plain": _seconds_per_100(plain), "ee": _seconds_per_100(ee)}}, fig)


EXPERIMENTS = {1: exp1_losses, 2: exp2_synthetic_labels, 3: exp3_l2_norm, 4: exp4_n_sweep,
               5: exp5_selection_ratio, 6: exp6_hard_negative_heatmap, 7: exp7_occlusion, 8: exp8_cost,
               9: exp9_memory_bank}
