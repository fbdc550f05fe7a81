"""Training loop for the experiments: P x K batches, a loss of ``ee_cuda.losses`` with or without EE,
evaluation on the held-out classes, optional per-epoch tracking, and checkpoints of results.

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
from dataclasses import dataclass

import numpy as np
import torch

from .. import losses, metrics, ops
from .data import Dataset, PKSampler
from .models import EmbeddingNet

__all__ = ["RunConfig", "LOSSES", "make_loss", "train_run", "embed", "set_seed", "resolve_device",
           "selection_ratio", "class_distance_matrix", "synthetic_recall"]

LOSSES = {"triplet": "TripletLoss", "lifted": "LiftedStructureLoss", "npair": "NPairLoss",
          "ms": "MultiSimilarityLoss", "hphn": "HPHNTripletLoss"}
LOSS_TITLES = {"triplet": "Triplet", "lifted": "Lifted structure", "npair": "N-pair", "ms": "Multi-similarity",
               "hphn": "HPHN triplet"}


@dataclass
class RunConfig:
    dataset: str
    loss: str = "triplet"
    n_inner: int = 0          # synthetic points per pair; 0 = the plain loss (no EE)
    l2_norm: bool = True      # normalize synthetic points
    seed: int = 0
    epochs: int = 10
    iters_per_epoch: int = 30
    P: int = 16               # classes per batch
    K: int = 4                # instances per class (even: adjacent-pair layout)
    lr: float = 1e-3
    embedding_dim: int = 64
    width: int = 32
    device: str = "cpu"

    def key(self) -> str:
        d = dataclasses.asdict(self)
        tag = f"{self.dataset}_{self.loss}_n{self.n_inner}{'' if self.l2_norm else '_nonorm'}_s{self.seed}"
        return tag + "_" + hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


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
    """``ee_cuda.losses`` module for ``name`` in ``LOSSES`` with the paper's default hyper-parameters."""
    if name not in LOSSES:
        raise ValueError(f"unknown loss {name!r}; expected one of {sorted(LOSSES)}")
    return getattr(losses, LOSSES[name])(n_inner_pts=n_inner, l2_norm=l2_norm, **kwargs)


@torch.no_grad()
def embed(model: torch.nn.Module, x: torch.Tensor, device: str = "cpu", batch: int = 1024) -> torch.Tensor:
    """Embeddings of ``x`` in eval mode, on ``device``; restores the model's training flag."""
    was_training = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch].to(device)) for i in range(0, x.shape[0], batch)]) if len(x) else \
        torch.empty(0, model.head.out_features, device=device)
    model.train(was_training)
    return out


@torch.no_grad()
def selection_ratio(emb: torch.Tensor, labels: torch.Tensor, n_inner: int, l2_norm: bool = True) -> tuple:
    """Of the hard negatives the pair-based EE losses choose (for each positive pair ``p`` its hardest
    negative pair ``q* = argmin_q dist[p, q]`` and that pair's minimizing ``(t, r)`` from
    ``ee_cuda.hard_negative_pairs``), how many involve a synthetic point (``1 <= t <= n`` or
    ``1 <= r <= n``): ``(synthetic count, total count)``."""

    pairs = ops.positive_pairs(labels, "all")
    if n_inner == 0 or pairs.shape[0] == 0:
        return 0, int(pairs.shape[0])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
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
    ``n_pairs`` random same-label pairs, each queried against all originals except its two endpoints
    (an endpoint is trivially of the same label)."""

    g = torch.Generator().manual_seed(seed)
    lab = labels.cpu()
    n = len(lab)
    i = torch.randint(0, n, (n_pairs * 4,), generator=g)
    j = torch.randint(0, n, (n_pairs * 4,), generator=g)
    ok = (lab[i] == lab[j]) & (i != j)
    if not bool(ok.any()):  # sparse classes: build pairs class by class
        raise ValueError("no same-label pairs found")
    pairs = torch.stack([i[ok], j[ok]], 1)[:n_pairs].to(emb.device)
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


def _load_checkpoint(path_json, path_pt):
    if os.path.exists(path_json) and os.path.exists(path_pt):
        with open(path_json) as f:
            result = json.load(f)
        result["state_dict"] = torch.load(path_pt, map_location="cpu", weights_only=True)
        result["from_checkpoint"] = True
        return result
    return None


def train_run(cfg: RunConfig, ds: Dataset, track: bool = False, checkpoint_dir: str | None = None,
              progress: bool = True, eval_seed: int = 0) -> dict:
    """Train one model and evaluate it on the held-out classes.

    Returns a JSON-able dict (plus ``"state_dict"``): ``config``, ``metrics`` (``ee_cuda.metrics.evaluate``
    on the test set), ``loss_per_epoch``, ``seconds_per_epoch`` (training only), and with ``track=True``
    per-epoch ``selection_ratio`` (over the training batches), ``synthetic_recall`` (test set) and
    ``class_distances`` (a fixed probe batch of 10 training classes). With ``checkpoint_dir`` a finished
    run is saved there and reloaded instead of retrained.
    """
    from tqdm.auto import tqdm

    device = resolve_device(cfg.device)
    if checkpoint_dir:
        os.makedirs(checkpoint_dir, exist_ok=True)
        pj = os.path.join(checkpoint_dir, cfg.key() + (".track" if track else "") + ".json")
        pp = pj[:-5] + ".pt"
        cached = _load_checkpoint(pj, pp)
        if cached is not None:
            return cached
    set_seed(cfg.seed)
    model = EmbeddingNet(cfg.embedding_dim, cfg.width).to(device)
    loss_fn = make_loss(cfg.loss, cfg.n_inner, cfg.l2_norm)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    sampler = PKSampler(ds.y_train, min(cfg.P, int(ds.y_train.unique().numel())), cfg.K, cfg.iters_per_epoch,
                        seed=cfg.seed)
    x_train, y_train = ds.x_train.to(device), ds.y_train.to(device)
    probe_x, probe_y = _probe_batch(ds)
    n_probe = cfg.n_inner if cfg.n_inner > 0 else 2
    hist = {"loss_per_epoch": [], "seconds_per_epoch": []}
    if track:
        hist.update(selection_ratio=[], synthetic_recall=[], class_distances=[])
    bar = tqdm(total=cfg.epochs * cfg.iters_per_epoch, desc=cfg.key()[:-9], leave=False, disable=not progress)
    for epoch in range(cfg.epochs):
        model.train()
        t0, losses, sel, tot, track_s = time.perf_counter(), [], 0, 0, 0.0
        for batch in sampler:
            idx = torch.as_tensor(batch, device=device)
            emb = model(x_train[idx])
            labels = y_train[idx]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                loss = loss_fn(emb, labels)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if track:
                t1 = time.perf_counter()
                s, t = selection_ratio(emb.detach(), labels, cfg.n_inner, cfg.l2_norm)
                sel, tot, track_s = sel + s, tot + t, track_s + time.perf_counter() - t1
            bar.update(1)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        hist["seconds_per_epoch"].append(time.perf_counter() - t0 - track_s)
        hist["loss_per_epoch"].append(float(np.mean(losses)))
        if track:
            hist["selection_ratio"].append(sel / max(tot, 1))
            test_emb = embed(model, ds.x_test, device)
            hist["synthetic_recall"].append(synthetic_recall(test_emb, ds.y_test.to(device), n_probe, cfg.l2_norm,
                                                             seed=epoch))
            pe = embed(model, probe_x, device)
            mat, classes = class_distance_matrix(pe, probe_y.to(device), cfg.n_inner, cfg.l2_norm)
            hist["class_distances"].append(mat)
            hist["probe_classes"] = [ds.class_names[c] if ds.class_names else c for c in classes]
        bar.set_postfix(loss=f"{hist['loss_per_epoch'][-1]:.3f}")
    bar.close()
    test_emb = embed(model, ds.x_test, device)
    result = {"config": dataclasses.asdict(cfg), "key": cfg.key(), "device": device,
              "metrics": metrics.evaluate(test_emb, ds.y_test.to(device), seed=eval_seed),
              "train_seconds": float(sum(hist["seconds_per_epoch"])), **hist}
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    if checkpoint_dir:
        with open(pj, "w") as f:
            json.dump(result, f)
        torch.save(state, pp)
    result["state_dict"] = state
    return result


def load_model(result: dict) -> EmbeddingNet:
    """The trained network of a ``train_run`` result (CPU, eval mode)."""
    cfg = result["config"]
    model = EmbeddingNet(cfg["embedding_dim"], cfg["width"])
    model.load_state_dict(result["state_dict"])
    return model.eval()
