"""Training loop for the experiments: P x K batches, a loss of ``ee_cuda.losses`` with or without EE,
evaluation on the held-out classes at chosen iterations (checkpoints), optional tracking of the hard
negatives, and stored results that later requests reuse.

CPU by default; ``device="cuda"`` (or ``"auto"``) uses the GPU when present. Runs are deterministic for a
given seed on one device and thread count.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import time
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from .. import losses, metrics, ops
from .data import Dataset, PKSampler
from .models import EmbeddingNet

__all__ = ["RunConfig", "LOSSES", "make_loss", "train_run", "load_result", "at_checkpoint", "selection_between",
           "load_model", "embed", "set_seed", "resolve_device", "selection_ratio", "class_distance_matrix",
           "synthetic_recall"]

LOSSES = {"triplet": "TripletLoss", "lifted": "LiftedStructureLoss", "npair": "NPairLoss",
          "ms": "MultiSimilarityLoss", "hphn": "HPHNTripletLoss"}
LOSS_TITLES = {"triplet": "Triplet", "lifted": "Lifted structure", "npair": "N-pair", "ms": "Multi-similarity",
               "hphn": "HPHN triplet"}


@dataclass
class RunConfig:
    """One training run. Runs that differ only in ``loss``, ``loss_options``, ``n_inner`` or ``l2_norm`` are
    a paired set: they share the network's initialization and the sequence of batches.
    How long a run trains is not part of it: the iterations at which it is evaluated are passed to
    ``train_run``, and a run evaluated at 1000 iterations holds the 500-iteration run as its prefix."""
    dataset: str
    loss: str = "hphn"
    n_inner: int = 0          # synthetic points per pair; 0 = the plain loss (no EE)
    l2_norm: bool = True      # normalize synthetic points
    seed: int = 0
    P: int = 8                # classes per batch
    K: int = 16               # instances per class (even: adjacent-pair layout)
    lr: float = 1e-3
    embedding_dim: int = 64
    width: int = 16
    loss_options: dict = field(default_factory=dict)  # keyword arguments of the loss (e.g. HPHN's margin)
    device: str = "cpu"
    data_id: str = ""         # Dataset.fingerprint() of the data it trains on ("" = not checked)
    memory_size: int = 0      # rows of a memory bank (ee_cuda.losses.CrossBatchMemory); 0 = none
    memory_weight: float = 1.0  # objective: loss(batch) + memory_weight * memory loss (with a memory)

    def key(self) -> str:
        """A file name for the run: a readable tag and a hash of every field. The memory fields enter both
        only when there is a memory, so the runs without one keep the keys they had before the memory."""
        d = dataclasses.asdict(self)
        tag = f"{self.dataset}_{self.loss}_n{self.n_inner}{'' if self.l2_norm else '_nonorm'}"
        if self.memory_size:
            tag += f"_mem{self.memory_size}" + (f"w{self.memory_weight:g}" if self.memory_weight != 1 else "")
        else:
            del d["memory_size"], d["memory_weight"]
        return tag + f"_s{self.seed}_" + hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} requested but CUDA is not available")
    return device


def set_seed(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % (2 ** 32))


def make_loss(name: str, n_inner: int = 0, l2_norm: bool = True, **kwargs):
    """``ee_cuda.losses`` module for ``name`` in ``LOSSES``: the library's defaults unless ``kwargs`` say
    otherwise."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    return getattr(losses, LOSSES[name])(n_inner_pts=n_inner, l2_norm=l2_norm, **kwargs)


@torch.no_grad()
def embed(model: torch.nn.Module, x: torch.Tensor, device: str = "cpu", batch: int = 256) -> torch.Tensor:
    """Embeddings of ``x`` in eval mode, on ``device``; restores the model's training flag."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch].to(device)) for i in range(0, x.shape[0], batch)]) if len(x) else \
        torch.empty(0, model.head.out_features, device=device)
    model.train(was_training)
    return out


@torch.no_grad()
def selection_ratio(emb: torch.Tensor, labels: torch.Tensor, n_inner: int, l2_norm: bool = True,
                    loss: str = "triplet") -> tuple:
    """Of the hard negatives ``loss`` chooses, how many involve a synthetic point: ``(synthetic, total)``.

    Pair losses: for each positive pair ``p`` its hardest negative pair ``q* = argmin_q dist[p, q]`` and
    that pair's minimizing ``(t, r)`` from ``ee_cuda.hard_negative_pairs``; synthetic when ``1 <= t <= n``
    or ``1 <= r <= n``. HPHN: for each anchor ``i`` the minimum over its own points (``x_i`` and its ``n``
    synthetic copies toward ``x_{i^1}``) of ``ee_cuda.hard_negative_points`` on the pairs ``(i, i^1)``;
    synthetic when the anchor's point or the negative point is. Rows without a negative are not counted."""

    if loss == "hphn":
        rows = torch.arange(len(labels), device=labels.device)
        pairs = torch.stack([rows, rows ^ 1], dim=1)
    else:
        pairs = ops.positive_pairs(labels, "all")
    if pairs.shape[0] == 0:
        return 0, 0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        if loss == "hphn":
            dist, index = ops.hard_negative_points(emb.float(), pairs, labels, n_inner, l2_norm)
            own = dist[:, : n_inner + 1]
            t = own.argmin(1)
            finite = torch.isfinite(own).any(1)
            r = index[torch.arange(len(t), device=t.device), t, 1]
            synth = ((t >= 1) | ((r >= 1) & (r <= n_inner))) & finite
        else:
            dist, index = ops.hard_negative_pairs(emb.float(), pairs, labels, n_inner, l2_norm)
            finite = torch.isfinite(dist).any(1)
            q = dist.argmin(1)
            tr = index[torch.arange(len(q), device=q.device), q]
            synth = ((tr >= 1) & (tr <= n_inner)).any(1) & finite
    return int(synth.sum()), int(finite.sum())


@torch.no_grad()
def class_distance_matrix(emb: torch.Tensor, labels: torch.Tensor, n_inner: int, l2_norm: bool = True):
    """Class x class matrix: off-diagonal, the mean hard-negative distance between the two classes'
    positive pairs (``ee_cuda.hard_negative_pairs`` with ``n_inner`` synthetic points per pair);
    diagonal, the mean positive-pair distance. Returns ``(matrix (C, C) list, class ids)``."""

    pairs = ops.positive_pairs(labels, "all")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        dist, _ = ops.hard_negative_pairs(emb.float(), pairs, labels, n_inner, l2_norm)
    pl = labels[pairs[:, 0]]
    classes = torch.unique(pl)
    C = len(classes)
    onehot = (pl[:, None] == classes[None, :]).double()  # (P, C)
    d = torch.where(torch.isfinite(dist), dist, torch.zeros_like(dist)).double()
    m = onehot.T @ d @ onehot / (onehot.sum(0)[:, None] * onehot.sum(0)[None, :])
    pos = (emb[pairs[:, 0]] - emb[pairs[:, 1]]).norm(dim=1).double()
    m[range(C), range(C)] = (onehot.T @ pos) / onehot.sum(0)
    return m.cpu().tolist(), classes.cpu().tolist()


@torch.no_grad()
def synthetic_recall(emb: torch.Tensor, labels: torch.Tensor, n_inner: int, l2_norm: bool = True,
                     n_pairs: int = 2000, seed: int = 0) -> dict:
    """Recall@1 of synthetic points vs originals (docs/design.md §11, experiment 2), on held-out embeddings.

    Originals: leave-one-out recall@1. Synthetic: ``n_inner`` points (``ee_cuda.expand``) between
    ``n_pairs`` random same-label pairs (a random sample of a class with at least two, and another sample
    of its class), each queried against all originals except its two endpoints (an endpoint is trivially
    of the same label)."""

    rng = np.random.default_rng(seed)
    lab = labels.cpu().numpy()
    members = {c: np.flatnonzero(lab == c) for c in np.unique(lab)}
    eligible = np.concatenate([m for m in members.values() if len(m) > 1] or [np.zeros(0, np.int64)])
    if len(eligible) == 0:
        raise ValueError("no class has two samples: no same-label pair exists")
    i = rng.choice(eligible, n_pairs)
    j = np.empty_like(i)
    for k, a in enumerate(i):
        m = members[lab[a]]
        r = rng.integers(len(m) - 1)
        j[k] = m[r] if m[r] != a else m[-1]  # a uniform choice among the class's other samples
    pairs = torch.as_tensor(np.stack([i, j], 1), device=emb.device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        syn = ops.expand(emb.float(), pairs, n_inner, l2_norm)  # (P, n, D)
    q = syn.reshape(-1, emb.shape[1])
    ql = labels[pairs[:, 0]].repeat_interleave(n_inner)
    ex = pairs.repeat_interleave(n_inner, dim=0)
    r_syn = metrics.recall_at_k(q, ql, (1,), gallery=emb.float(), gallery_labels=labels, exclude=ex)[1]
    r_orig = metrics.recall_at_k(emb.float(), labels, (1,))[1]
    return {"original": r_orig, "synthetic": r_syn}


def _probe_batch(ds: Dataset, n_classes: int = 10, per_class: int = 4, seed: int = 1234):
    rng = np.random.default_rng(seed)
    y = ds.y_train.numpy()
    classes = np.sort(rng.choice(np.unique(y), min(n_classes, len(np.unique(y))), replace=False))
    idx = np.concatenate([rng.choice(np.flatnonzero(y == c), per_class, replace=False) for c in classes])
    return ds.x_train[idx], ds.y_train[idx]


def _digest(h, tensor_or_array) -> None:
    a = tensor_or_array.detach().cpu().numpy() if isinstance(tensor_or_array, torch.Tensor) else tensor_or_array
    h.update(np.ascontiguousarray(a).tobytes())


def load_result(checkpoint_dir: str, cfg: RunConfig, checkpoints, track: bool = False):
    """The stored result of ``cfg`` if one covers every iteration in ``checkpoints`` (and was tracked when
    ``track``), else ``None``."""
    path = os.path.join(checkpoint_dir, cfg.key() + ".json")
    if not (os.path.exists(path) and os.path.exists(path[:-5] + ".pt")):
        return None
    with open(path) as f:
        result = json.load(f)
    if not set(map(int, checkpoints)) <= set(result["checkpoints"]) or (track and not result["tracked"]):
        return None
    result["state_dicts"] = torch.load(path[:-5] + ".pt", map_location="cpu", weights_only=True)
    result["from_checkpoint"] = True
    return result


def train_run(cfg: RunConfig, ds: Dataset, checkpoints=(100, 250, 500, 1000), track: bool = False,
              checkpoint_dir: str | None = None, progress: bool = True, eval_seed: int = 0) -> dict:
    """Train one model for ``max(checkpoints)`` iterations and evaluate it on the held-out classes at
    every iteration in ``checkpoints``.

    The network is initialized from ``torch.manual_seed(cfg.seed)`` and the batches come from a
    ``PKSampler`` seeded with ``cfg.seed``, whose generator nothing else draws from: the variants of one
    seed see the same initial weights and the same batches whatever their loss does (``init_digest`` and
    each checkpoint's ``batch_digest``, of the batches up to it, let a reader check it). Evaluation and
    tracking run in eval mode and draw from no shared generator, so they do not change the training.

    With ``cfg.memory_size > 0`` the objective is XBM's: ``loss(emb, y) + cfg.memory_weight * memory(emb,
    y)``, where ``memory`` is an ``ee_cuda.losses.CrossBatchMemory`` of ``memory_size`` rows around the same
    loss, empty at iteration 0 (no warm-up), that enqueues every batch (detached) before its loss; its
    negatives come from the memory, the current batch included. The memory draws from no generator, so the
    pairing above holds for memory runs as well (and they pair with the runs without a memory too).

    Returns a JSON-able dict (plus ``"state_dicts"``: the weights at every checkpoint): ``config``,
    ``checkpoints``, ``curve`` (per checkpoint: ``ee_cuda.metrics.evaluate`` on the test set and, counted
    from the start, the batch digest, the sum of the training losses and the training seconds),
    ``metrics`` (the last checkpoint's), ``init_digest``, and with ``track=True`` per checkpoint
    ``selection_counts`` (hard negatives chosen with a synthetic point and in all, over the training
    batches from the start: ``selection_between`` turns them into a ratio), ``synthetic_recall`` (test set)
    and ``class_distances`` (a fixed probe batch of 10 training classes, with the run's ``n`` and, in
    ``class_distances_originals``, with ``n = 0``). With ``checkpoint_dir`` the result is stored there and
    reused when it covers a later request (``load_result``).
    """
    from tqdm.auto import tqdm

    checkpoints = sorted({int(c) for c in checkpoints})
    if not checkpoints or checkpoints[0] < 1:
        raise ValueError(f"checkpoints must be positive iteration counts, got {checkpoints}")
    if cfg.data_id and cfg.data_id != ds.fingerprint():
        raise ValueError(f"run {cfg.key()} is for dataset {cfg.data_id}, got {ds.name} {ds.fingerprint()}")
    device = resolve_device(cfg.device)
    if checkpoint_dir:
        os.makedirs(checkpoint_dir, exist_ok=True)
        cached = load_result(checkpoint_dir, cfg, checkpoints, track)
        if cached is not None:
            return cached
    set_seed(cfg.seed)
    model = EmbeddingNet(cfg.embedding_dim, cfg.width).to(device)
    init = hashlib.sha1()
    for v in model.state_dict().values():
        _digest(init, v)
    loss_fn = make_loss(cfg.loss, cfg.n_inner, cfg.l2_norm, **cfg.loss_options)
    memory = (losses.CrossBatchMemory(loss_fn, cfg.embedding_dim, cfg.memory_size, device=device)
              if cfg.memory_size else None)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sampler = PKSampler(ds.y_train, min(cfg.P, int(ds.y_train.unique().numel())), cfg.K, checkpoints[-1],
                        seed=cfg.seed)
    batches = hashlib.sha1()
    x_train, y_train = ds.x_train.to(device), ds.y_train.to(device)
    y_test = ds.y_test.to(device)
    probe_x, probe_y = _probe_batch(ds)
    n_probe = cfg.n_inner if cfg.n_inner > 0 else 2
    curve, states = [], {}
    tracked = {"selection_counts": [], "synthetic_recall": [], "class_distances": [], "class_distances_originals": []}
    bar = tqdm(total=checkpoints[-1], desc=cfg.key()[:-9], leave=False, disable=not progress)
    model.train()
    loss_sum, sel, tot, seconds = 0.0, 0, 0, 0.0
    t0 = time.perf_counter()
    for it, batch in enumerate(sampler, start=1):
        _digest(batches, np.asarray(batch, dtype=np.int64))
        idx = torch.as_tensor(batch, device=device)
        emb = model(x_train[idx])
        labels = y_train[idx]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            loss = loss_fn(emb, labels)
            if memory is not None:
                loss = loss + cfg.memory_weight * memory(emb, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        loss_sum += float(loss.detach())
        if track:
            seconds += time.perf_counter() - t0
            s, t = selection_ratio(emb.detach(), labels, cfg.n_inner, cfg.l2_norm, cfg.loss)
            sel, tot, t0 = sel + s, tot + t, time.perf_counter()
        bar.update(1)
        if it not in checkpoints:
            continue
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        seconds += time.perf_counter() - t0
        test_emb = embed(model, ds.x_test, device)
        curve.append({"iteration": it, **metrics.evaluate(test_emb, y_test, seed=eval_seed), "loss_sum": loss_sum,
                      "train_seconds": seconds, "batch_digest": batches.copy().hexdigest()})
        states[it] = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        if track:
            tracked["selection_counts"].append([sel, tot])
            tracked["synthetic_recall"].append(synthetic_recall(test_emb, y_test, n_probe, cfg.l2_norm, seed=it))
            pe = embed(model, probe_x, device)
            mat, classes = class_distance_matrix(pe, probe_y.to(device), cfg.n_inner, cfg.l2_norm)
            tracked["class_distances"].append(mat)
            tracked["class_distances_originals"].append(class_distance_matrix(pe, probe_y.to(device), 0)[0])
            tracked["probe_classes"] = [ds.class_names[c] if ds.class_names else c for c in classes]
        bar.set_postfix(r1=f"{curve[-1]['recall@1']:.3f}")
        t0 = time.perf_counter()
    bar.close()
    result = {"config": dataclasses.asdict(cfg), "key": cfg.key(), "device": device, "checkpoints": checkpoints,
              "curve": curve, "metrics": {k: v for k, v in curve[-1].items() if k != "iteration"},
              "train_seconds": seconds, "init_digest": init.hexdigest(), "tracked": track,
              **(tracked if track else {})}
    if checkpoint_dir:
        path = os.path.join(checkpoint_dir, cfg.key() + ".json")
        with open(path, "w") as f:
            json.dump(result, f)
        torch.save(states, path[:-5] + ".pt")
    result["state_dicts"] = states
    return result


def selection_between(run: dict, iterations) -> list:
    """The tracked selection ratio of ``run`` over the batches after each of ``iterations``' previous
    entry (from the start for the first) up to that entry: equal intervals for runs of any length."""
    counts = {c: run["selection_counts"][i] for i, c in enumerate(run["checkpoints"])}
    out, prev = [], [0, 0]
    for c in iterations:
        s, t = counts[int(c)]
        out.append((s - prev[0]) / max(t - prev[1], 1))
        prev = [s, t]
    return out


def at_checkpoint(result: dict, iteration: int) -> dict:
    """The evaluation of ``result`` at ``iteration`` (one of its checkpoints)."""
    for c in result["curve"]:
        if c["iteration"] == int(iteration):
            return c
    raise KeyError(f"run {result['key']} was not evaluated at iteration {iteration}")


def load_model(result: dict, iteration: int | None = None) -> EmbeddingNet:
    """The network of a ``train_run`` result at ``iteration`` (one of its checkpoints; default the last),
    on the CPU, in eval mode."""
    cfg = result["config"]
    model = EmbeddingNet(cfg["embedding_dim"], cfg["width"])
    iteration = int(iteration if iteration is not None else result["checkpoints"][-1])
    model.load_state_dict(result["state_dicts"][iteration])
    return model.eval()
