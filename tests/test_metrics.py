"""Tests of ee_cuda.metrics (docs/design.md §10): against scikit-learn, brute force, the review's worked example and
pytorch-metric-learning. Inputs are drawn fresh on every run."""
import itertools

import numpy as np
import pytest
import torch

from ee_cuda import metrics

RNG = np.random.default_rng()


def _random_labels(n, n_classes, rng=RNG):
    return rng.integers(0, n_classes, size=n)


def _brute_recall(x, y, ks):
    x = np.asarray(x, dtype=np.float64)
    out = {}
    n = len(y)
    d = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(d, np.inf)
    order = np.argsort(d, axis=1, kind="stable")
    for k in ks:
        hits = sum(any(y[order[i, m]] == y[i] for m in range(min(k, n - 1))) for i in range(n))
        out[k] = hits / n
    return out


@pytest.mark.parametrize("chunk", [1, 7, 1024])
def test_recall_matches_brute_force(chunk):
    n, d = int(RNG.integers(20, 120)), int(RNG.integers(2, 16))
    x = torch.randn(n, d, dtype=torch.float64)
    y = torch.as_tensor(_random_labels(n, int(RNG.integers(2, 10))))
    ks = (1, 2, 4, 8)
    got = metrics.recall_at_k(x, y, ks, chunk_size=chunk)
    want = _brute_recall(x.numpy(), y.numpy(), ks)
    assert got == pytest.approx(want)
    assert all(got[a] <= got[b] for a, b in zip(ks, ks[1:]))  # monotone in k


def test_recall_chunking_is_invariant_float32():
    n = 700
    x = torch.nn.functional.normalize(torch.randn(n, 32), dim=1)
    y = torch.randint(0, 30, (n,))
    full = metrics.recall_at_k(x, y, (1, 2, 4, 8, 16), chunk_size=n)
    for chunk in (3, 64, 250):
        assert metrics.recall_at_k(x, y, (1, 2, 4, 8, 16), chunk_size=chunk) == full


def test_recall_perfect_and_never_self():
    # well separated clusters: recall 1; a singleton class can never be recalled (self excluded)
    centers = torch.randn(5, 8) * 100
    y = torch.arange(5).repeat_interleave(4)
    x = centers[y] + 0.01 * torch.randn(20, 8)
    assert metrics.recall_at_k(x, y, (1, 4))[1] == 1.0
    y2 = torch.cat([y, torch.tensor([99])])
    x2 = torch.cat([x, torch.randn(1, 8)])
    r = metrics.recall_at_k(x2, y2, (1, 20))
    assert r[20] == pytest.approx(20 / 21)


def test_recall_with_gallery_and_exclude():
    g = torch.randn(30, 4, dtype=torch.float64)
    gy = torch.as_tensor(_random_labels(30, 3))
    q = g[:10] + 1e-6
    qy = gy[:10]
    assert metrics.recall_at_k(q, qy, (1,), gallery=g, gallery_labels=gy)[1] == 1.0
    ex = torch.arange(10)[:, None]
    got = metrics.recall_at_k(q, qy, (1, 2), gallery=g, gallery_labels=gy, exclude=ex)
    # excluding each query's own copy equals leave-one-out on the gallery for those rows
    want = _brute_recall(g.numpy(), gy.numpy(), (1, 2))
    loo = metrics.recall_at_k(g, gy, (1, 2), chunk_size=10)
    assert loo == pytest.approx(want)
    d = torch.cdist(q, g)
    d[torch.arange(10), torch.arange(10)] = float("inf")
    nn1 = d.argmin(1)
    assert got[1] == pytest.approx(float((gy[nn1] == qy).double().mean()))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_recall_on_cuda_matches_cpu():
    x = torch.randn(3000, 16)
    y = torch.randint(0, 50, (3000,))
    assert metrics.recall_at_k(x.cuda(), y.cuda(), chunk_size=512) == pytest.approx(metrics.recall_at_k(x, y))


def test_nmi_matches_sklearn():
    from sklearn.metrics import normalized_mutual_info_score
    for _ in range(20):
        n = int(RNG.integers(2, 300))
        y = _random_labels(n, int(RNG.integers(1, 12)))
        c = _random_labels(n, int(RNG.integers(1, 12))) if RNG.random() < 0.7 else y.copy()
        assert metrics.nmi(y, c) == pytest.approx(normalized_mutual_info_score(y, c), abs=1e-10)
    y = _random_labels(100, 5)
    assert metrics.nmi(y, y) == pytest.approx(1.0)
    assert metrics.nmi(torch.as_tensor(y), torch.as_tensor(np.zeros(100, int))) == pytest.approx(0.0)


def test_review_worked_nmi_example():
    # Review, experiment 1: cluster C=1 holds half of the points with class shares 3/10, 7/10, 0/10,
    # so its term of H(Y|C) is -1/2 [0.3 log2 0.3 + 0.7 log2 0.7] = 0.4406 bits.
    y = np.array([1] * 3 + [2] * 7 + [1] * 2 + [2] * 3 + [3] * 5)
    c = np.array([1] * 10 + [2] * 10)
    perm = RNG.permutation(len(y))
    t = metrics.entropy_terms(y[perm], c[perm])
    assert round(t["per_cluster"][1], 4) == 0.4406
    assert t["H_Y_given_C"] == pytest.approx(t["per_cluster"][1] + t["per_cluster"][2])
    assert metrics.nmi(y, c) == pytest.approx(2 * t["I"] / (t["H_Y"] + t["H_C"]))


def _brute_pair_f1(y, c):
    tp = fp = fn = 0
    for i, j in itertools.combinations(range(len(y)), 2):
        same_y, same_c = y[i] == y[j], c[i] == c[j]
        tp += same_y and same_c
        fp += same_c and not same_y
        fn += same_y and not same_c
    if tp == 0:
        return 0.0
    p, r = tp / (tp + fp), tp / (tp + fn)
    return 2 * p * r / (p + r)


def test_pairwise_f1_brute_force_and_sklearn():
    from sklearn.metrics.cluster import pair_confusion_matrix
    for _ in range(10):
        n = int(RNG.integers(3, 60))
        y, c = _random_labels(n, int(RNG.integers(1, 6))), _random_labels(n, int(RNG.integers(1, 6)))
        got = metrics.pairwise_f1(y, c)
        assert got == pytest.approx(_brute_pair_f1(y, c))
        (_, fp), (fn, tp) = pair_confusion_matrix(y, c) / 2  # sklearn counts ordered pairs
        want = 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)
        assert got == pytest.approx(want)
    y = _random_labels(50, 4)
    assert metrics.pairwise_f1(y, y) == 1.0


def test_cluster_and_evaluate():
    k = int(RNG.integers(3, 8))
    centers = torch.randn(k, 6) * 20
    y = torch.arange(k).repeat_interleave(15)
    x = centers[y] + 0.1 * torch.randn(len(y), 6)
    c = metrics.cluster(x, k, seed=int(RNG.integers(1000)))
    assert c.shape == (len(y),) and len(np.unique(c)) == k
    res = metrics.evaluate(x, y)
    assert set(res) == {"nmi", "f1", "recall@1", "recall@2", "recall@4", "recall@8"}
    assert res["nmi"] == pytest.approx(1.0) and res["f1"] == pytest.approx(1.0) and res["recall@1"] == 1.0
    noise = metrics.evaluate(torch.randn(200, 6), torch.randint(0, 10, (200,)))
    assert noise["nmi"] < 0.3 and 0 <= noise["f1"] < 0.5
    with pytest.raises(ValueError):
        metrics.cluster(x, 0)
    with pytest.raises(ValueError):
        metrics.recall_at_k(x, y[:-1])


def test_precision_at_1_matches_pytorch_metric_learning():
    pytest.importorskip("pytorch_metric_learning")
    from pytorch_metric_learning.distances import LpDistance
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN
    n = int(RNG.integers(100, 400))
    x = torch.randn(n, 8)
    y = torch.randint(0, int(RNG.integers(3, 20)), (n,))
    calc = AccuracyCalculator(include=("precision_at_1",), k=1, device=torch.device("cpu"),
                              knn_func=CustomKNN(LpDistance(normalize_embeddings=False)))
    acc = calc.get_accuracy(x, y, x, y, ref_includes_query=True)
    assert metrics.recall_at_k(x, y, (1,))[1] == pytest.approx(acc["precision_at_1"], abs=1e-6)
