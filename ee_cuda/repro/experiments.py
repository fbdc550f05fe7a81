"""The paper's experiments (docs/design.md §11, experiments 1-8) on the offline datasets of ``ee_cuda.repro.data``.

Every experiment is a function ``expN_*(ctx) -> dict`` that trains (or reuses) the runs it needs through
``ctx.run`` and writes ``expN_*.json`` (numbers) and ``expN_*.png`` (a matplotlib figure) into
``ctx.out_dir``. ``ee_cuda.repro.cli`` chains them and writes ``report.md`` from the JSON files only.
"""
from __future__ import annotations

import dataclasses
import json
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import build_info, metrics, use_backend
from .data import load_dataset, occlude
from .train import LOSS_TITLES, RunConfig, embed, load_model, make_loss, resolve_device, train_run

__all__ = ["ReproConfig", "Context", "EXPERIMENTS", "exp1_losses", "exp2_synthetic_labels", "exp3_l2_norm",
           "exp4_n_sweep", "exp5_selection_ratio", "exp6_hard_negative_heatmap", "exp7_occlusion", "exp8_cost"]


@dataclass
class ReproConfig:
    """What ``python -m ee_cuda.repro`` runs. The defaults are the quick configuration (about 8
    minutes on 2 idle CPU cores); ``full()`` is the larger one."""
    datasets: tuple = ("digits", "fonts")
    losses: tuple = ("triplet", "lifted", "npair", "ms", "hphn")
    n_inner: int = 2                     # synthetic points per pair for "with EE"
    seeds: tuple = (0, 1, 2)             # main table (experiment 1)
    ablation_seeds: tuple = (0,)         # experiments 3 and 4
    epochs: dict = field(default_factory=lambda: {"digits": 5, "fonts": 10})
    iters_per_epoch: dict = field(default_factory=lambda: {"digits": 20, "fonts": 20})
    batch: dict = field(default_factory=lambda: {"digits": (5, 8), "fonts": (16, 4)})  # P classes x K
    ablation_dataset: str = "fonts"      # experiments 3, 4, 6 and 8
    ablation_loss: str = "triplet"
    n_sweep: tuple = (0, 1, 2, 4, 8)
    occlusion_losses: tuple = ("triplet", "ms")
    occlusion_fractions: tuple = (0.0, 0.25, 0.375, 0.5)
    cost_ns: tuple = (0, 1, 2, 4, 8, 16)
    cost_losses: tuple = ("triplet", "hphn")
    cost_iters: int = 8
    width: int = 16
    embedding_dim: int = 64
    lr: float = 1e-3
    font_classes: int | None = None      # None: every rendered glyph class
    font_per_class: int = 24
    device: str = "cpu"

    @classmethod
    def full(cls, **kw) -> "ReproConfig":
        base = dict(seeds=(0, 1, 2, 3, 4), ablation_seeds=(0, 1, 2),
                    epochs={"digits": 15, "fonts": 20}, iters_per_epoch={"digits": 30, "fonts": 40},
                    n_sweep=(0, 1, 2, 4, 8, 16, 32), occlusion_losses=("triplet", "lifted", "npair", "ms", "hphn"),
                    occlusion_fractions=(0.0, 0.125, 0.25, 0.375, 0.5, 0.625), cost_iters=20, width=32,
                    font_per_class=40)
        base.update(kw)
        return cls(**base)

    @classmethod
    def tiny(cls, **kw) -> "ReproConfig":
        """For tests: seconds, not minutes."""
        base = dict(losses=("triplet", "hphn"), seeds=(0, 1), epochs={"digits": 2, "fonts": 2},
                    iters_per_epoch={"digits": 2, "fonts": 2}, n_sweep=(0, 1, 2), occlusion_fractions=(0.0, 0.5),
                    occlusion_losses=("triplet",), cost_ns=(0, 2), cost_iters=2, width=4, embedding_dim=16,
                    font_classes=16, font_per_class=6, batch={"digits": (4, 4), "fonts": (4, 2)})
        base.update(kw)
        return cls(**base)

    def run_config(self, dataset: str, loss: str, n_inner: int, seed: int, l2_norm: bool = True) -> RunConfig:
        P, K = self.batch.get(dataset, (16, 4))
        return RunConfig(dataset=dataset, loss=loss, n_inner=n_inner, l2_norm=l2_norm, seed=seed,
                         epochs=self.epochs.get(dataset, 8), iters_per_epoch=self.iters_per_epoch.get(dataset, 20),
                         P=P, K=K, lr=self.lr, embedding_dim=self.embedding_dim, width=self.width,
                         device=self.device)

    def to_json(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}


class Context:
    """Shared state of one reproduction: config, datasets, output and work folders, and a memo of runs
    (a run asked for twice, e.g. EE n=2 seed 0 in experiments 1, 3 and 4, is trained once)."""

    def __init__(self, cfg: ReproConfig, out_dir: str, work_dir: str | None = None, progress: bool = True):
        self.cfg, self.out_dir = cfg, out_dir
        self.work_dir = work_dir or os.path.join(out_dir, "_work")
        self.progress = progress
        os.makedirs(out_dir, exist_ok=True)
        os.makedirs(self.work_dir, exist_ok=True)
        self.cfg.device = resolve_device(cfg.device)
        self._datasets, self._runs = {}, {}

    def dataset(self, name: str):
        if name not in self._datasets:
            kw = {}
            if name == "fonts":
                kw = dict(n_classes=self.cfg.font_classes, per_class=self.cfg.font_per_class)
            self._datasets[name] = load_dataset(name, cache_dir=os.path.join(self.work_dir, "cache"), **kw)
        return self._datasets[name]

    def run(self, rc: RunConfig, track: bool = False) -> dict:
        key = rc.key()
        hit = self._runs.get((key, True)) or (None if track else self._runs.get((key, False)))
        if hit is None:
            hit = train_run(rc, self.dataset(rc.dataset), track=track,
                            checkpoint_dir=os.path.join(self.work_dir, "checkpoints"), progress=self.progress)
            self._runs[(key, track)] = hit
        return hit

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


def _mean_std(values):
    a = np.asarray(values, dtype=np.float64)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


METRIC_KEYS = ("nmi", "f1", "recall@1", "recall@2", "recall@4", "recall@8")


# ------------------------------------------------------------------------------------------ experiment 1

def _main_track(ctx, dataset, loss, seed):
    """The seed-0 runs of the ablation loss are tracked per epoch (experiments 2, 5, 6 read them)."""
    return loss == ctx.cfg.ablation_loss and seed == ctx.cfg.seeds[0]


def exp1_losses(ctx: Context) -> dict:
    """Each loss with and without EE: NMI, F1, Recall@1/2/4/8 on held-out classes, mean ± std over seeds."""
    cfg = ctx.cfg
    rows = []
    for ds in cfg.datasets:
        for loss in cfg.losses:
            for n in (0, cfg.n_inner):
                per_seed = []
                for seed in cfg.seeds:
                    r = ctx.run(cfg.run_config(ds, loss, n, seed), track=_main_track(ctx, ds, loss, seed))
                    per_seed.append({"seed": seed, **r["metrics"], "train_seconds": r["train_seconds"],
                                     "seconds_per_epoch": float(np.mean(r["seconds_per_epoch"]))})
                row = {"dataset": ds, "loss": loss, "ee": n > 0, "n_inner": n, "per_seed": per_seed}
                for k in METRIC_KEYS + ("seconds_per_epoch",):
                    row[k + "_mean"], row[k + "_std"] = _mean_std([p[k] for p in per_seed])
                rows.append(row)
    plt = _plt()
    fig, axes = plt.subplots(1, len(cfg.datasets), figsize=(5.5 * len(cfg.datasets), 3.8), squeeze=False)
    for ax, ds in zip(axes[0], cfg.datasets):
        x = np.arange(len(cfg.losses))
        for off, ee, color in ((-0.2, False, "tab:gray"), (0.2, True, "tab:red")):
            sel = [next(r for r in rows if r["dataset"] == ds and r["loss"] == lo and r["ee"] == ee) for lo in cfg.losses]
            ax.bar(x + off, [100 * r["recall@1_mean"] for r in sel], 0.4, yerr=[100 * r["recall@1_std"] for r in sel],
                   color=color, capsize=3, label=f"+EE (n={cfg.n_inner})" if ee else "plain")
        ax.set_xticks(x, [LOSS_TITLES[lo] for lo in cfg.losses], rotation=20)
        lo_all = min(100 * r["recall@1_mean"] - 100 * r["recall@1_std"] for r in rows if r["dataset"] == ds)
        ax.set_ylim(max(0, lo_all - 10), 100)
        ax.set_ylabel("Recall@1 (%) on held-out classes")
        ax.set_title(f"{ds}: mean ± std over {len(cfg.seeds)} seeds")
        ax.legend(loc="lower right")
    return ctx.write("exp1_losses", {"seeds": list(cfg.seeds), "n_inner": cfg.n_inner, "rows": rows,
                                     "datasets": {d: ctx.dataset(d).describe() for d in cfg.datasets}}, fig)


# ------------------------------------------------------------------------------------------ experiment 2

def exp2_synthetic_labels(ctx: Context) -> dict:
    """Recall@1 of synthetic points (queries against originals, own endpoints excluded) vs originals,
    per epoch, on the held-out classes, for the tracked plain and EE runs."""
    cfg = ctx.cfg
    out = {}
    plt = _plt()
    fig, axes = plt.subplots(1, len(cfg.datasets), figsize=(5 * len(cfg.datasets), 3.5), squeeze=False)
    for ax, ds in zip(axes[0], cfg.datasets):
        out[ds] = {}
        for n, style in ((0, "--"), (cfg.n_inner, "-")):
            r = ctx.run(cfg.run_config(ds, cfg.ablation_loss, n, cfg.seeds[0]), track=True)
            sr = r["synthetic_recall"]
            name = "EE" if n else "plain"
            out[ds][name] = {"original": [s["original"] for s in sr], "synthetic": [s["synthetic"] for s in sr],
                             "n_probe": n or 2}
            ep = np.arange(1, len(sr) + 1)
            ax.plot(ep, [100 * s["synthetic"] for s in sr], style, color="tab:red", label=f"synthetic ({name})")
            ax.plot(ep, [100 * s["original"] for s in sr], style, color="tab:blue", label=f"original ({name})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("Recall@1 (%)")
        ax.set_title(f"{ds}: {LOSS_TITLES[cfg.ablation_loss]}, test classes")
        ax.legend(fontsize=7)
    return ctx.write("exp2_synthetic_labels", {"loss": cfg.ablation_loss, "seed": cfg.seeds[0], "results": out}, fig)


# ------------------------------------------------------------------------------------------ experiment 3

def exp3_l2_norm(ctx: Context) -> dict:
    """EE with and without L2 normalization of the synthetic points (and the plain loss for reference)."""
    cfg = ctx.cfg
    ds, loss = cfg.ablation_dataset, cfg.ablation_loss
    variants = [("plain", 0, True), ("EE, L2-normalized", cfg.n_inner, True), ("EE, not normalized", cfg.n_inner, False)]
    rows = []
    for name, n, l2 in variants:
        per_seed = [ctx.run(cfg.run_config(ds, loss, n, s, l2_norm=l2))["metrics"] for s in cfg.ablation_seeds]
        row = {"variant": name, "n_inner": n, "l2_norm": l2, "per_seed": per_seed}
        for k in METRIC_KEYS:
            row[k + "_mean"], row[k + "_std"] = _mean_std([p[k] for p in per_seed])
        rows.append(row)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    keys = ("nmi", "f1", "recall@1")
    for i, row in enumerate(rows):
        ax.bar(np.arange(len(keys)) + (i - 1) * 0.27, [100 * row[k + "_mean"] for k in keys], 0.27,
               yerr=[100 * row[k + "_std"] for k in keys], capsize=3, label=row["variant"])
    ax.set_xticks(np.arange(len(keys)), ["NMI", "F1", "R@1"])
    ax.set_ylabel("%")
    ax.set_title(f"{ds}, {LOSS_TITLES[loss]}: L2 normalization of synthetic points")
    ax.legend(fontsize=8)
    return ctx.write("exp3_l2_norm", {"dataset": ds, "loss": loss, "seeds": list(cfg.ablation_seeds), "rows": rows}, fig)


# ------------------------------------------------------------------------------------------ experiment 4

def exp4_n_sweep(ctx: Context) -> dict:
    """Number of synthetic points n (0 = plain loss)."""
    cfg = ctx.cfg
    ds, loss = cfg.ablation_dataset, cfg.ablation_loss
    rows = []
    for n in cfg.n_sweep:
        per_seed = [ctx.run(cfg.run_config(ds, loss, n, s), track=(s == cfg.seeds[0]))["metrics"]
                    for s in cfg.ablation_seeds]
        row = {"n_inner": n, "per_seed": per_seed}
        for k in METRIC_KEYS:
            row[k + "_mean"], row[k + "_std"] = _mean_std([p[k] for p in per_seed])
        rows.append(row)
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ns = [r["n_inner"] for r in rows]
    for k, label in (("recall@1", "R@1"), ("nmi", "NMI"), ("f1", "F1")):
        ax.errorbar(range(len(ns)), [100 * r[k + "_mean"] for r in rows], yerr=[100 * r[k + "_std"] for r in rows],
                    marker="o", capsize=3, label=label)
    ax.set_xticks(range(len(ns)), [str(n) for n in ns])
    ax.set_xlabel("synthetic points per pair n (0 = no EE)")
    ax.set_ylabel("%")
    ax.set_title(f"{ds}, {LOSS_TITLES[loss]}")
    ax.legend(fontsize=8)
    return ctx.write("exp4_n_sweep", {"dataset": ds, "loss": loss, "seeds": list(cfg.ablation_seeds), "rows": rows}, fig)


# ------------------------------------------------------------------------------------------ experiment 5

def exp5_selection_ratio(ctx: Context) -> dict:
    """Share of chosen hard negatives that involve a synthetic point, per epoch, for each n > 0 of the
    sweep (ablation dataset) and the EE run of every dataset."""
    cfg = ctx.cfg
    curves = {}
    for ds in cfg.datasets:
        r = ctx.run(cfg.run_config(ds, cfg.ablation_loss, cfg.n_inner, cfg.seeds[0]), track=True)
        curves[f"{ds}, n={cfg.n_inner}"] = r["selection_ratio"]
    for n in cfg.n_sweep:
        if n > 0 and n != cfg.n_inner and cfg.ablation_dataset in cfg.datasets:
            r = ctx.run(cfg.run_config(cfg.ablation_dataset, cfg.ablation_loss, n, cfg.seeds[0]), track=True)
            curves[f"{cfg.ablation_dataset}, n={n}"] = r["selection_ratio"]
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, c in curves.items():
        ax.plot(np.arange(1, len(c) + 1), [100 * v for v in c], marker="o", ms=3, label=name)
    ax.set_xlabel("epoch")
    ax.set_ylabel("hard negatives with a synthetic point (%)")
    ax.set_ylim(0, 100)
    ax.set_title(f"Selection ratio of synthetic points ({LOSS_TITLES[cfg.ablation_loss]})")
    ax.legend(fontsize=7)
    return ctx.write("exp5_selection_ratio", {"loss": cfg.ablation_loss, "seed": cfg.seeds[0], "curves": curves}, fig)


# ------------------------------------------------------------------------------------------ experiment 6

def exp6_hard_negative_heatmap(ctx: Context) -> dict:
    """Class x class mean hard-negative distance on a fixed probe batch of 10 training classes, at the
    first, middle and last epoch, without and with EE. Diagonal: mean positive-pair distance."""
    cfg = ctx.cfg
    ds = cfg.ablation_dataset
    runs = {name: ctx.run(cfg.run_config(ds, cfg.ablation_loss, n, cfg.seeds[0]), track=True)
            for name, n in (("plain", 0), ("EE", cfg.n_inner))}
    E = len(runs["plain"]["class_distances"])
    epochs = sorted({0, (E - 1) // 2, E - 1})
    summary = {}
    for name, r in runs.items():
        mats = [np.asarray(m) for m in r["class_distances"]]
        off = [m[~np.eye(len(m), dtype=bool)] for m in mats]
        summary[name] = {"mean_hard_negative": [float(o.mean()) for o in off],
                         "min_hard_negative": [float(o.min()) for o in off],
                         "mean_positive": [float(np.diag(m).mean()) for m in mats]}
    plt = _plt()
    fig, axes = plt.subplots(2, len(epochs), figsize=(3.2 * len(epochs), 6), squeeze=False)
    vmax = max(float(np.max(r["class_distances"][e])) for r in runs.values() for e in epochs)
    for i, (name, r) in enumerate(runs.items()):
        for j, e in enumerate(epochs):
            im = axes[i][j].imshow(np.asarray(r["class_distances"][e]), cmap="jet_r", vmin=0, vmax=vmax)
            axes[i][j].set_title(f"{name}, epoch {e + 1}", fontsize=9)
            names = r.get("probe_classes", [])
            axes[i][j].set_xticks(range(len(names)), names, fontsize=6)
            axes[i][j].set_yticks(range(len(names)), names, fontsize=6)
    fig.colorbar(im, ax=axes, shrink=0.7, label="distance (off-diagonal: hard negative)")
    return ctx.write("exp6_hard_negative_heatmap", {
        "dataset": ds, "loss": cfg.ablation_loss, "seed": cfg.seeds[0], "epochs_shown": [e + 1 for e in epochs],
        "probe_classes": runs["plain"].get("probe_classes"), "summary": summary,
        "matrices": {name: [r["class_distances"][e] for e in epochs] for name, r in runs.items()}}, fig)


# ------------------------------------------------------------------------------------------ experiment 7

def exp7_occlusion(ctx: Context) -> dict:
    """Recall@1 on held-out classes when a square patch (side = fraction of the image side) of every
    test image is zeroed at a random position; models of experiment 1, plain vs EE, mean over seeds."""
    cfg = ctx.cfg
    rows = []
    for ds in cfg.datasets:
        d = ctx.dataset(ds)
        occluded = {f: occlude(d.x_test, f, seed=1000 + i) for i, f in enumerate(cfg.occlusion_fractions)}
        for loss in cfg.occlusion_losses:
            for n in (0, cfg.n_inner):
                per_seed = []
                for seed in cfg.seeds:
                    r = ctx.run(cfg.run_config(ds, loss, n, seed), track=_main_track(ctx, ds, loss, seed))
                    model = load_model(r).to(cfg.device)
                    yt = d.y_test.to(cfg.device)
                    per_seed.append([metrics.recall_at_k(embed(model, occluded[f], cfg.device), yt, (1,))[1]
                                     for f in cfg.occlusion_fractions])
                a = np.asarray(per_seed)
                rows.append({"dataset": ds, "loss": loss, "ee": n > 0, "n_inner": n, "per_seed": per_seed,
                             "recall@1_mean": a.mean(0).tolist(),
                             "recall@1_std": (a.std(0, ddof=1) if len(a) > 1 else 0 * a[0]).tolist()})
    plt = _plt()
    fig, axes = plt.subplots(1, len(cfg.datasets), figsize=(5 * len(cfg.datasets), 3.5), squeeze=False)
    colors = dict(zip(cfg.losses, plt.rcParams["axes.prop_cycle"].by_key()["color"]))
    for ax, ds in zip(axes[0], cfg.datasets):
        for r in (r for r in rows if r["dataset"] == ds):
            ax.errorbar(100 * np.asarray(cfg.occlusion_fractions), 100 * np.asarray(r["recall@1_mean"]),
                        yerr=100 * np.asarray(r["recall@1_std"]), fmt="-o" if r["ee"] else "--s", ms=3, capsize=2,
                        color=colors.get(r["loss"]), label=f"{LOSS_TITLES[r['loss']]}{' +EE' if r['ee'] else ''}")
        ax.set_xlabel("occluded patch side (% of image side)")
        ax.set_ylabel("Recall@1 (%)")
        ax.set_title(ds)
        ax.legend(fontsize=7)
    return ctx.write("exp7_occlusion", {"fractions": list(cfg.occlusion_fractions), "seeds": list(cfg.seeds),
                                        "rows": rows}, fig)


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
    """Training time and memory of one step by n (ablation dataset's batch shape, fresh network), with
    the fused ops and with the plain pure-PyTorch reference (materialized points and distances).

    Time: seconds per training iteration (forward, loss, backward, Adam step), median over
    ``cost_iters`` after one warm-up, times iterations per epoch = seconds per epoch; and the loss alone
    (forward + backward on fixed embeddings). Memory: bytes autograd keeps for backward (network +
    loss, and loss alone; transient workspace inside a kernel is not counted), and on CUDA the peak
    allocated memory of a step.
    """
    from .data import PKSampler

    cfg = ctx.cfg
    ds = cfg.ablation_dataset
    d = ctx.dataset(ds)
    device = cfg.device
    rc = cfg.run_config(ds, cfg.ablation_loss, 0, 0)
    P = min(rc.P, int(d.y_train.unique().numel()))
    batch = next(iter(PKSampler(d.y_train, P, rc.K, 1, seed=0)))
    xb, yb = d.x_train[batch].to(device), d.y_train[batch].to(device)
    fused_ok = bool(build_info().get("cuda" if device.startswith("cuda") else "cpu"))
    backends = ("fused", "reference") if fused_ok else ("reference",)
    rows = []
    for backend in backends:
        for loss_name in cfg.cost_losses:
            for n in cfg.cost_ns:
                with use_backend(backend):
                    rows.append(_cost_row(cfg, rc, loss_name, n, xb, yb, device, backend))
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for c, loss_name in enumerate(cfg.cost_losses):
        for backend in backends:
            rr = [r for r in rows if r["loss"] == loss_name and r["backend"] == backend]
            ns = [r["n_inner"] for r in rr]
            style = "-o" if backend == "fused" else "--s"
            lab = f"{LOSS_TITLES[loss_name]} ({backend})"
            axes[0].plot(ns, [r["seconds_per_epoch"] for r in rr], style, color=colors[c], label=lab)
            axes[1].plot(ns, [r["loss_ms"] for r in rr], style, color=colors[c], label=lab)
            axes[2].plot(ns, [r["saved_bytes_loss"] / 2 ** 20 for r in rr], style, color=colors[c], label=lab)
    axes[0].set_ylabel(f"training s / epoch ({rc.iters_per_epoch} iterations)")
    axes[1].set_ylabel("loss forward + backward (ms)")
    axes[2].set_ylabel("loss: memory saved for backward (MiB)")
    axes[1].set_yscale("log")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("synthetic points per pair n (0 = no EE)")
        ax.legend(fontsize=7)
    fig.suptitle(f"Cost by n on {device} (batch {len(batch)}, {ds}); solid: fused ops, dashed: reference")
    return ctx.write("exp8_cost", {"dataset": ds, "device": device, "iters_per_epoch": rc.iters_per_epoch,
                                   "backends": list(backends),
                                   "threads": torch.get_num_threads(), "build_info": build_info(), "rows": rows}, fig)


def _cost_row(cfg, rc, loss_name, n, xb, yb, device, backend) -> dict:
    from .models import EmbeddingNet

    torch.manual_seed(0)
    model = EmbeddingNet(cfg.embedding_dim, cfg.width).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    loss_fn = make_loss(loss_name, n)
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
    sec = float(np.median(step_times))
    return {"loss": loss_name, "n_inner": n, "backend": backend, "batch": int(len(yb)),
            "seconds_per_iteration": sec, "seconds_per_epoch": sec * rc.iters_per_epoch,
            "loss_ms": 1e3 * float(np.median(loss_times)), "saved_bytes_step": saved,
            "saved_bytes_loss": loss_saved, "cuda_peak_bytes": peak}


EXPERIMENTS = {1: exp1_losses, 2: exp2_synthetic_labels, 3: exp3_l2_norm, 4: exp4_n_sweep,
               5: exp5_selection_ratio, 6: exp6_hard_negative_heatmap, 7: exp7_occlusion, 8: exp8_cost}
