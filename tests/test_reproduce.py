"""End-to-end test of ``python -m ee_cuda.repro`` on a tiny configuration, and unit tests of its
parts (datasets, sampler, occlusion, tracked statistics, report verdicts)."""
import json
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from ee_cuda import reference
from ee_cuda.repro import cli, data, experiments, report, train

RNG = np.random.default_rng()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro")
    threads = torch.get_num_threads()
    try:
        path = cli.main(["--tiny", "--out", str(out), "--no-progress"])
    finally:
        torch.set_num_threads(threads)
    return out, path


def test_tiny_run_writes_everything(tiny_run):
    out, path = tiny_run
    assert path == os.path.join(str(out), "report.md")
    names = ["exp1_losses", "exp2_synthetic_labels", "exp3_l2_norm", "exp4_n_sweep", "exp5_selection_ratio",
             "exp6_hard_negative_heatmap", "exp7_occlusion", "exp8_cost"]
    import matplotlib.image as mpimg
    for name in names:
        with open(out / f"{name}.json") as f:
            assert json.load(f)["experiment"] == name
        img = mpimg.imread(out / f"{name}.png")
        assert img.shape[0] > 50 and img.shape[1] > 50
    report = open(path).read()
    for name in names:
        assert f"({name}.png)" in report
    for section in range(1, 9):
        assert re.search(rf"^## {section}\. ", report, re.M), section


def test_report_tables_match_json(tiny_run):
    out, path = tiny_run
    report = open(path).read()
    e1 = json.load(open(out / "exp1_losses.json"))
    assert len(e1["rows"]) == 2 * 2 * 2  # datasets x losses x (plain, EE)
    for r in e1["rows"]:
        assert len(r["per_seed"]) == 2
        cells = " | ".join(f"{100 * r[m + '_mean']:.1f} ± {100 * r[m + '_std']:.1f}" for m in experiments.METRIC_KEYS)
        assert cells in report
        for m in experiments.METRIC_KEYS:
            vals = [p[m] for p in r["per_seed"]]
            assert r[m + "_mean"] == pytest.approx(np.mean(vals))
            assert 0.0 <= r[m + "_mean"] <= 1.0
    # one verdict line per dataset x loss
    assert len(re.findall(r"^\| (digits|fonts) \| (Triplet|HPHN triplet) \| [+-]\d", report, re.M)) == 4
    e5 = json.load(open(out / "exp5_selection_ratio.json"))
    for curve in e5["curves"].values():
        assert all(0.0 <= v <= 1.0 for v in curve)
    e8 = json.load(open(out / "exp8_cost.json"))
    assert {r["n_inner"] for r in e8["rows"]} == {0, 2}
    assert all(r["saved_bytes_step"] > 0 and r["seconds_per_iteration"] > 0 for r in e8["rows"])


def test_report_is_generated_from_json(tiny_run, tmp_path):
    out, _ = tiny_run
    for name in os.listdir(out):
        if name.endswith(".json"):
            (tmp_path / name).write_text((out / name).read_text())
    e1 = json.loads((tmp_path / "exp1_losses.json").read_text())
    value = float(RNG.uniform(0.1, 0.9))
    e1["rows"][0]["recall@1_mean"] = value
    (tmp_path / "exp1_losses.json").write_text(json.dumps(e1))
    text = open(report.write_report(str(tmp_path))).read()
    assert f"{100 * value:.1f} ± " in text


def test_resume_from_checkpoints(tiny_run):
    out, _ = tiny_run
    ctx = experiments.Context(experiments.ReproConfig.tiny(), str(out), progress=False)
    cfg = ctx.cfg
    r = ctx.run(cfg.run_config("digits", "triplet", cfg.n_inner, cfg.seeds[1]))
    assert r.get("from_checkpoint")
    e1 = json.load(open(out / "exp1_losses.json"))
    row = next(x for x in e1["rows"] if x["dataset"] == "digits" and x["loss"] == "triplet" and x["ee"])
    assert row["per_seed"][1]["recall@1"] == r["metrics"]["recall@1"]
    model = train.load_model(r)
    emb = train.embed(model, ctx.dataset("digits").x_test)
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(emb)), atol=1e-5)


def test_cli_help():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "ee_cuda.repro", "--help"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0
    for opt in ("--full", "--datasets", "--losses", "--n", "--epochs", "--device", "--out"):
        assert opt in res.stdout


def test_verdict_rule():
    k = 3
    s = float(RNG.uniform(0.001, 0.05))
    base = float(RNG.uniform(0.2, 0.7))
    se = math.sqrt(2 * s * s / k)
    assert report.verdict(base, s, base + 3 * se, s, k, k)[3] == "helped"
    assert report.verdict(base, s, base - 3 * se, s, k, k)[3] == "hurt"
    assert report.verdict(base, s, base + 0.5 * se, s, k, k)[3].startswith("no clear effect")
    assert report.verdict(base, 0.0, base + 0.01, 0.0, 1, 1)[3] == "not tested (one seed)"
    assert report.verdict(base, s, base + 3 * se, s, k, k)[2] == pytest.approx(3.0)


def test_digits_split_is_zero_shot():
    d = data.load_digits()
    assert set(d.y_train.tolist()) == {0, 1, 2, 3, 4} and set(d.y_test.tolist()) == {5, 6, 7, 8, 9}
    assert d.x_train.shape[1:] == (1, 8, 8) and 0 <= float(d.x_train.min()) and float(d.x_train.max()) <= 1


def test_fonts_render_and_split(tmp_path):
    n_classes, per_class = int(RNG.integers(6, 14)) * 2, int(RNG.integers(3, 6))
    d = data.load_fonts(size=16, per_class=per_class, n_classes=n_classes, cache_dir=str(tmp_path),
                        seed=int(RNG.integers(100)))
    tr, te = set(d.y_train.tolist()), set(d.y_test.tolist())
    assert not tr & te and len(tr) + len(te) == n_classes and len(tr) == n_classes // 2
    assert d.x_train.shape == (len(tr) * per_class, 1, 16, 16)
    assert float(d.x_train.min()) >= 0 and float(d.x_train.max()) <= 1
    ink = d.x_train.flatten(1).sum(1)
    assert bool((ink > 1).all())  # every image shows a glyph
    assert len(set(d.class_names)) == len(d.class_names) == n_classes


def test_font_cache_roundtrip(tmp_path):
    seed = int(RNG.integers(100))
    a = data.load_fonts(per_class=3, n_classes=8, cache_dir=str(tmp_path), seed=seed)
    assert len(os.listdir(tmp_path)) == 1
    b = data.load_fonts(per_class=3, n_classes=8, cache_dir=str(tmp_path), seed=seed)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)


def test_pk_sampler_adjacent_layout():
    n_classes = int(RNG.integers(3, 20))
    labels = torch.as_tensor(RNG.integers(0, n_classes, size=500))
    present = len(labels.unique())
    P, K = int(RNG.integers(1, present + 1)), 2 * int(RNG.integers(1, 5))
    batches = list(data.PKSampler(labels, P, K, iterations=5, seed=int(RNG.integers(1000))))
    assert len(batches) == 5
    for b in batches:
        y = labels[b]
        assert len(b) == P * K and len(y.unique()) == P
        assert torch.equal(y.view(-1, K), y.view(-1, K)[:, :1].expand(-1, K))
        reference.positive_pairs(y, "adjacent")  # raises if rows 2k, 2k+1 differ
    with pytest.raises(ValueError):
        data.PKSampler(labels, P, 3, 1)
    with pytest.raises(ValueError):
        data.PKSampler(labels, present + 1, 2, 1)


def test_occlude_zeroes_a_square():
    n, side = int(RNG.integers(2, 8)), int(RNG.integers(8, 20))
    x = torch.rand(n, 1, side, side) + 0.5
    frac = float(RNG.uniform(0.1, 0.9))
    s = max(1, round(frac * side))
    y = data.occlude(x, frac, seed=int(RNG.integers(1000)))
    zeros = (y == 0).flatten(1).sum(1)
    assert bool((zeros == s * s).all())
    assert torch.equal(data.occlude(x, 0.0), x)


def test_selection_ratio_matches_reference():
    n = int(RNG.integers(1, 5))
    P, K = int(RNG.integers(2, 6)), 2 * int(RNG.integers(1, 3))
    labels = torch.arange(P).repeat_interleave(K)
    emb = torch.nn.functional.normalize(torch.randn(P * K, 8, dtype=torch.float64), dim=1)
    synth, total = train.selection_ratio(emb, labels, n)
    pairs = reference.positive_pairs(labels, "all")
    dist, index = reference.hard_negative_pairs(emb, pairs, labels, n)
    want = 0
    for p in range(len(pairs)):
        q = int(dist[p].argmin())
        t, r = index[p, q].tolist()
        want += (1 <= t <= n) or (1 <= r <= n)
    assert total == len(pairs) and synth == want
    assert train.selection_ratio(emb, labels, 0)[0] == 0


def test_class_distance_matrix_brute_force():
    C, K = int(RNG.integers(2, 5)), 2 * int(RNG.integers(1, 3))
    labels = torch.arange(C).repeat_interleave(K)
    emb = torch.nn.functional.normalize(torch.randn(C * K, 6, dtype=torch.float64), dim=1)
    n = int(RNG.integers(0, 4))
    mat, classes = train.class_distance_matrix(emb, labels, n)
    mat = np.asarray(mat)
    assert classes == list(range(C))
    pairs = reference.positive_pairs(labels, "all")
    dist, _ = reference.hard_negative_pairs(emb, pairs, labels, n)
    pl = labels[pairs[:, 0]]
    for a in range(C):
        for b in range(C):
            if a == b:
                want = np.mean([float((emb[i] - emb[j]).norm()) for i, j in pairs.tolist() if labels[i] == a])
            else:
                want = float(dist[pl == a][:, pl == b].mean())
            assert mat[a, b] == pytest.approx(want)
    assert np.allclose(mat, mat.T)


def test_synthetic_recall_well_separated():
    centers = torch.nn.functional.normalize(torch.randn(6, 16), dim=1) * 10
    labels = torch.arange(6).repeat_interleave(5)
    emb = torch.nn.functional.normalize(centers[labels] + 0.1 * torch.randn(30, 16), dim=1)
    res = train.synthetic_recall(emb, labels, int(RNG.integers(1, 5)), n_pairs=50, seed=int(RNG.integers(100)))
    assert res == {"original": 1.0, "synthetic": 1.0}
    noise = train.synthetic_recall(torch.nn.functional.normalize(torch.randn(300, 16), dim=1),
                                   torch.randint(0, 30, (300,)), 2, n_pairs=200)
    assert noise["synthetic"] < 0.5 and noise["original"] < 0.5
