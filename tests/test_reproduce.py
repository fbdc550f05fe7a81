"""End-to-end test of ``python -m ee_cuda.repro`` on a tiny configuration, and unit tests of its
parts (the pairing of runs, the statistics, datasets, sampler, occlusion, tracked statistics)."""
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
from ee_cuda.repro import cli, data, experiments, report, stats, train

RNG = np.random.default_rng()
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("repro")
    path = cli.main(["--tiny", "--out", str(out), "--no-progress", "--jobs", "2"])
    return out, path


NAMES = ["exp1_losses", "exp2_synthetic_labels", "exp3_l2_norm", "exp4_n_sweep", "exp5_selection_ratio",
         "exp6_hard_negative_heatmap", "exp7_occlusion", "exp8_cost", "exp9_memory_bank"]


def test_tiny_run_writes_everything(tiny_run):
    out, path = tiny_run
    assert path == os.path.join(str(out), "report.md")
    import matplotlib.image as mpimg
    for name in NAMES:
        with open(out / f"{name}.json") as f:
            assert json.load(f)["experiment"] == name
        img = mpimg.imread(out / f"{name}.png")
        assert img.shape[0] > 50 and img.shape[1] > 50
    report = open(path).read()
    for name in NAMES:
        assert f"({name}.png)" in report
    for section in range(1, 10):
        assert re.search(rf"^## {section}\. ", report, re.M), section
    info = json.load(open(out / "run_info.json"))
    cfg = experiments.ReproConfig.tiny()
    assert info["paired"] is True and info["seeds"] == cfg.main_seeds
    d = info["datasets"]["glyphs"]
    assert d["train_classes"] + d["test_classes"] == cfg.glyph_classes
    assert info["runs"] == len(experiments.merge_requests(cfg.requests()))


def test_report_tables_match_json(tiny_run):
    out, path = tiny_run
    report = open(path).read()
    e1 = json.load(open(out / "exp1_losses.json"))
    cfg = experiments.ReproConfig.tiny()
    assert len(e1["curves"]) == sum(len(cfg.checkpoints_of(lo)) for lo in cfg.losses)
    for c in e1["curves"]:
        seeds = cfg.seeds_of(c["loss"])
        ps = e1["per_seed"][c["loss"]]
        i = ps["checkpoints"].index(c["iteration"])
        plain = [r[i] for r in ps["plain_recall@1"]]
        ee = [r[i] for r in ps["ee_recall@1"]]
        assert c["k"] == len(seeds) and c["diffs"] == pytest.approx(np.subtract(ee, plain).tolist())
        assert c["mean"] == pytest.approx(np.mean(np.subtract(ee, plain)))
        row = (f"| {train.LOSS_TITLES[c['loss']]} | {c['iteration']} | {c['k']} | {100 * c['a_mean']:.1f} | "
               f"{100 * c['b_mean']:.1f} | {100 * c['mean']:+.1f} ± {100 * c['se']:.1f} ")
        assert row in report, row
    assert all(r["same_batches"] for r in e1["final"])
    assert len(re.findall(r"^- \*\*(Triplet|HPHN triplet)\*\*", report, re.M)) == 2
    e5 = json.load(open(out / "exp5_selection_ratio.json"))
    for curve in e5["curves"].values():
        assert all(0.0 <= v <= 1.0 for seed in curve["per_seed"] for v in seed)
    e8 = json.load(open(out / "exp8_cost.json"))
    assert {r["n_inner"] for r in e8["rows"]} == {0, 2}
    assert all(r["saved_bytes_step"] > 0 and r["seconds_per_iteration"] > 0 for r in e8["rows"])


def copy_json(src, dst):
    """The JSON files of a run's output folder, copied to ``dst`` (to rewrite the report from edited data)."""
    for name in os.listdir(src):
        if name.endswith(".json"):
            (dst / name).write_text((src / name).read_text())


def test_report_is_generated_from_json(tiny_run, tmp_path):
    out, _ = tiny_run
    copy_json(out, tmp_path)
    e1 = json.loads((tmp_path / "exp1_losses.json").read_text())
    value = float(RNG.uniform(0.1, 0.9))
    e1["curves"][0]["b_mean"] = value
    (tmp_path / "exp1_losses.json").write_text(json.dumps(e1))
    text = open(report.write_report(str(tmp_path))).read()
    assert f"| {100 * value:.1f} | " in text


def test_experiments_read_their_own_checkpoints(tiny_run):
    """The tiny configuration trains the main loss's ablation seeds past the main checkpoints (merged
    runs); experiment 7's unoccluded column must still be experiment 1's models at its last checkpoint,
    and experiment 5's intervals those of its own checkpoints."""
    out, _ = tiny_run
    cfg = experiments.ReproConfig.tiny()
    assert max(cfg.ablation_checkpoints) > max(cfg.checkpoints)
    e1 = json.load(open(out / "exp1_losses.json"))
    e7 = json.load(open(out / "exp7_occlusion.json"))
    for loss in cfg.losses:
        c7 = next(c for c in e7["comparisons"] if c["loss"] == loss and c["fraction"] == 0)
        c1 = next(c for c in e1["final"] if c["loss"] == loss)
        assert c7["iteration"] == c1["iteration"] == cfg.checkpoints_of(loss)[-1]
        assert c7["diffs"] == pytest.approx(c1["diffs"], abs=1.5 / 48)  # R@1 at k=1 vs k<=8: a tie at most
    e5 = json.load(open(out / "exp5_selection_ratio.json"))
    assert e5["checkpoints"] == list(cfg.ablation_checkpoints)
    assert all(len(c["mean"]) == len(cfg.ablation_checkpoints) for c in e5["curves"].values())
    assert all(c["same_batches"] for name in ("exp3_l2_norm", "exp4_n_sweep")
               for c in json.load(open(out / f"{name}.json"))["comparisons"])


def test_memory_bank_experiment(tiny_run):
    """Experiment 9 of the tiny run: paired memory runs, its tables as the JSON says, experiment 1's in-batch
    comparison beside it."""
    out, path = tiny_run
    text = open(path).read()
    cfg = experiments.ReproConfig.tiny()
    e9 = json.load(open(out / "exp9_memory_bank.json"))
    e1 = json.load(open(out / "exp1_losses.json"))
    assert e9["checkpoints"] == list(cfg.checkpoints) and e9["seeds"] == list(range(cfg.main_seeds))
    assert e9["memory_size"] == cfg.memory_size and e9["memory_weight"] == 1
    assert all(c["same_batches"] for c in e9["curves"]) and e9["final"]["same_batches"]
    # the memory runs share their seeds' weights and batches with experiment 1's runs
    ctx = experiments.Context(cfg, str(out), progress=False)
    for s in e9["seeds"]:
        r = ctx.run(cfg.run_config(cfg.main_loss, 0, s), cfg.checkpoints)
        assert r["init_digest"] == e9["per_seed"]["init_digests"][s]
        assert train.at_checkpoint(r, cfg.checkpoints[-1])["batch_digest"] == e9["per_seed"]["batch_digests"][s]
    assert not ctx.trained
    assert {e9["final"]["p_holm"], e9["best"]["p_holm"]} <= set(stats.holm([e9["final"]["p"], e9["best"]["p"]]))
    section = text.split("## 9. ")[1]
    for c in e9["curves"]:
        r = next(x for x in e1["curves"] if x["loss"] == cfg.main_loss and x["iteration"] == c["iteration"])
        row = (f"| {c['iteration']} | {c['k']} | {100 * c['a_mean']:.1f} | {100 * c['b_mean']:.1f} | "
               f"{100 * c['mean']:+.1f} ± {100 * c['se']:.1f} ")
        assert row in section, row
        assert f"| {100 * r['a_mean']:.1f} / {100 * r['b_mean']:.1f} | {100 * r['mean']:+.1f} ± " in section
    assert "(exp9_memory_bank.png)" in section and "**With a memory bank**" in text.split("## Setup")[0]


def test_experiments_added_to_an_out_folder(tiny_run, tmp_path):
    """``--experiments 9`` into a folder with results adds to them: run_info keeps the earlier invocation
    (with the experiments it still holds), the report keeps every section; another configuration is
    refused before training."""
    out, _ = tiny_run
    for name in os.listdir(out):
        if name.endswith((".json", ".png")):
            (tmp_path / name).write_bytes((out / name).read_bytes())
    os.remove(tmp_path / "exp9_memory_bank.json")
    args = ["--tiny", "--out", str(tmp_path), "--work-dir", str(out / "_work"), "--no-progress", "--jobs", "1"]
    cli.main(args + ["--experiments", "9"])
    info = json.load(open(tmp_path / "run_info.json"))
    assert info["experiments"] == list(range(1, 10)) and info["invocations"][1]["runs_trained"] == 0
    assert info["runs"] == len(experiments.merge_requests(experiments.ReproConfig.tiny().requests()))
    assert [r["experiments"] for r in info["invocations"]] == [list(range(1, 9)), [9]]
    assert info["invocations"][0]["command"] == json.load(open(out / "run_info.json"))["command"]
    text = (tmp_path / "report.md").read_text()
    for section in range(1, 10):
        assert re.search(rf"^## {section}\. ", text, re.M), section
    assert text.count("- Command: ") == 2 and "(experiment 9)" in text
    assert (tmp_path / "exp9_memory_bank.json").read_text() == (out / "exp9_memory_bank.json").read_text()
    with pytest.raises(SystemExit, match="main_seeds"):
        cli.main(args + ["--experiments", "9", "--seeds", "2"])


def test_smoke_set_report_has_no_verdicts(tiny_run, tmp_path):
    out, _ = tiny_run
    copy_json(out, tmp_path)
    e1 = json.loads((tmp_path / "exp1_losses.json").read_text())
    e1["dataset"]["name"] = "digits"
    (tmp_path / "exp1_losses.json").write_text(json.dumps(e1))
    text = open(report.write_report(str(tmp_path))).read()
    assert "smoke set" in text
    for words in ("helped", "hurt", "no effect detected", "| higher |", "| lower |"):
        assert words not in text.split("## Caveats")[0].split("## Setup")[1], words


def test_resume_from_stored_runs(tiny_run):
    out, _ = tiny_run
    ctx = experiments.Context(experiments.ReproConfig.tiny(), str(out), progress=False)
    cfg = ctx.cfg
    loss = cfg.losses[-1]
    r = ctx.run(cfg.run_config(loss, cfg.n_inner, 1), cfg.checkpoints_of(loss))
    assert r.get("from_checkpoint") and not ctx.trained
    e1 = json.load(open(out / "exp1_losses.json"))
    assert e1["per_seed"][loss]["ee_recall@1"][1] == [train.at_checkpoint(r, c)["recall@1"]
                                                      for c in cfg.checkpoints_of(loss)]
    # a shorter request is served by the stored run's earlier checkpoints
    r2 = ctx.run(cfg.run_config(loss, cfg.n_inner, 1), cfg.checkpoints_of(loss)[:1])
    assert r2 is r and not ctx.trained
    model = train.load_model(r)
    emb = train.embed(model, ctx.dataset().x_test)
    assert torch.allclose(emb.norm(dim=1), torch.ones(len(emb)), atol=1e-5)


@pytest.fixture(scope="module")
def small_glyphs(tmp_path_factory):
    return data.load_glyphs(per_class=4, n_classes=12, cache_dir=str(tmp_path_factory.mktemp("glyphs")))


def _small_run(ds, **kw):
    rc = train.RunConfig(dataset="glyphs", loss=kw.pop("loss", "hphn"), P=3, K=4, width=4, embedding_dim=8,
                         seed=kw.pop("seed", 0), **kw)
    return train.train_run(rc, ds, (2, 5), progress=False)


def _batches(run):
    return [c["batch_digest"] for c in run["curve"]]


def test_pairing_same_init_and_batches(small_glyphs):
    """Plain and EE runs of a seed share the initial weights and the batch sequence; another seed does not."""
    seed = int(RNG.integers(1000))
    print("seed", seed)
    plain = _small_run(small_glyphs, seed=seed)
    ee = _small_run(small_glyphs, seed=seed, n_inner=int(RNG.integers(1, 5)))
    nonorm = _small_run(small_glyphs, seed=seed, n_inner=2, l2_norm=False, loss="triplet")
    other = _small_run(small_glyphs, seed=seed + 1)
    for r in (ee, nonorm):
        assert r["init_digest"] == plain["init_digest"] and _batches(r) == _batches(plain)
    assert other["init_digest"] != plain["init_digest"] and _batches(other) != _batches(plain)
    learned = [[(c["recall@1"], c["loss_sum"]) for c in r["curve"]] for r in (plain, ee)]
    assert learned[0] != learned[1]  # the loss does change what is learned


def test_memory_runs_are_paired_and_use_the_memory(small_glyphs):
    """With a memory bank, plain and EE runs of a seed share the initial weights and the batches with each
    other and with the runs without one; the memory changes the loss; the runs' keys never collide, and a
    run without a memory keeps the key it had before the memory fields existed."""
    seed = int(RNG.integers(1000))
    print("seed", seed)
    size = 12 + 2 * int(RNG.integers(0, 10))  # batches of 12 rows: partial fill, then the ring wraps
    plain = _small_run(small_glyphs, seed=seed)
    mem = {n: _small_run(small_glyphs, seed=seed, n_inner=n, memory_size=size) for n in (0, 2)}
    for r in mem.values():
        assert r["init_digest"] == plain["init_digest"] and _batches(r) == _batches(plain)
    assert [c["loss_sum"] for c in mem[0]["curve"]] != [c["loss_sum"] for c in plain["curve"]]
    assert mem[0]["curve"][-1]["loss_sum"] > plain["curve"][-1]["loss_sum"]  # in-batch + memory term (w = 1)
    keys = {r["key"] for r in (plain, *mem.values())}
    assert len(keys) == 3 and all(f"_mem{size}_" in r["key"] for r in mem.values())
    import dataclasses
    import hashlib
    rc = train.RunConfig(**plain["config"])
    d = {k: v for k, v in dataclasses.asdict(rc).items() if k not in ("memory_size", "memory_weight")}
    assert rc.key() == f"glyphs_hphn_n0_s{seed}_" + hashlib.sha1(json.dumps(d, sort_keys=True).encode()).hexdigest()[:8]


def test_loss_cannot_change_the_batches(small_glyphs, monkeypatch):
    """A loss that draws from torch's and numpy's global generators leaves the batches and the
    initialization alone: the sampler owns its generator."""
    plain = _small_run(small_glyphs, seed=3)
    make = train.make_loss

    def greedy(*args, **kwargs):
        inner = make(*args, **kwargs)

        def loss(x, y):
            torch.rand(7)
            np.random.rand(5)
            return inner(x, y) + 0 * torch.randn(())
        return loss

    monkeypatch.setattr(train, "make_loss", greedy)
    r = _small_run(small_glyphs, seed=3)
    assert _batches(r) == _batches(plain) and r["init_digest"] == plain["init_digest"]


def test_tracking_and_schedule_do_not_change_training(small_glyphs):
    """Evaluation and tracking draw from no shared generator, and a longer schedule has the shorter one as
    its prefix: a stored 1000-iteration run answers for its 500-iteration checkpoint."""
    rc = train.RunConfig(dataset="glyphs", loss="hphn", n_inner=2, P=3, K=4, width=4, embedding_dim=8, seed=5)
    short = train.train_run(rc, small_glyphs, (2, 4), progress=False)
    long = train.train_run(rc, small_glyphs, (2, 4, 7), track=True, progress=False)
    for key in ("recall@1", "nmi", "loss_sum", "batch_digest"):
        assert [c[key] for c in long["curve"][:2]] == [c[key] for c in short["curve"]], key
    for it in (2, 4):
        for k, v in short["state_dicts"][it].items():
            assert torch.equal(v, long["state_dicts"][it][k]), (it, k)
    assert long["init_digest"] == short["init_digest"]
    assert len(long["selection_counts"]) == len(long["synthetic_recall"]) == len(long["class_distances"]) == 3
    ratios = train.selection_between(long, (4, 7))
    (s2, t2), (s4, t4), (s7, t7) = long["selection_counts"]
    assert ratios == [s4 / t4, (s7 - s4) / (t7 - t4)] and all(0 <= r <= 1 for r in ratios)


def test_merge_requests_covers_every_request():
    cfg = experiments.ReproConfig()
    merged = experiments.merge_requests(cfg.requests())
    for rc, cps, track in cfg.requests():
        _, have, tracked = merged[rc.key()]
        assert set(cps) <= set(have) and (tracked or not track)
    main = cfg.run_config(cfg.main_loss, cfg.n_inner, 0)
    assert merged[main.key()][1] == sorted(set(cfg.checkpoints) | set(cfg.ablation_checkpoints))
    assert cfg.main_seeds >= 8 and len(cfg.checkpoints) >= 3 and cfg.loss_options["hphn"]["margin"] == 1e-5
    full = experiments.ReproConfig.full()
    assert full.ablation_seeds >= 5 and max(full.checkpoints) == 2000
    # experiment 9: optional in the default, part of --full; its runs are keyed apart from the others
    assert 9 not in cfg.default_experiments and 9 in full.default_experiments
    mem = experiments.merge_requests(cfg.requests([9]))
    assert len(mem) == 2 * cfg.main_seeds and not set(mem) & set(merged)
    assert all(rc.memory_size == cfg.memory_size > 0 and cps == list(cfg.checkpoints) for rc, cps, _ in mem.values())
    assert len(full.memory_seed_list()) >= 5 and full.memory_checkpoint_list() == list(full.checkpoints)


def test_paired_statistics_hand_worked():
    """Differences 1, 2, 3, 4: mean 2.5, sd sqrt(5/3), se sqrt(5/12), t = 2.5 / se with 3 degrees of
    freedom. For 3 degrees of freedom the t distribution has a closed form,
    P(|T| > t) = 1 - (2/pi) (x / (1 + x^2) + atan x) with x = t / sqrt(3); t_{0.975, 3} = 3.182446."""
    s = stats.paired([0, 0, 0, 0], [1, 2, 3, 4])
    se = math.sqrt(5 / 12)
    t = 2.5 / se
    x = t / math.sqrt(3)
    p = 1 - (2 / math.pi) * (x / (1 + x * x) + math.atan(x))
    assert s["diffs"] == [1, 2, 3, 4] and s["k"] == 4 and s["df"] == 3
    assert s["mean"] == pytest.approx(2.5) and s["sd"] == pytest.approx(math.sqrt(5 / 3))
    assert s["se"] == pytest.approx(se) and s["t"] == pytest.approx(t) and s["p"] == pytest.approx(p, rel=1e-9)
    assert s["ci"] == pytest.approx([2.5 - 3.182446 * se, 2.5 + 3.182446 * se], rel=1e-6)
    # the pairing matters: shifting both variants by a per-seed offset changes nothing
    offsets = RNG.normal(size=4)
    assert stats.paired(offsets, offsets + [1, 2, 3, 4])["se"] == pytest.approx(se)
    one = stats.paired([0.5], [0.7])
    assert one["mean"] == pytest.approx(0.2) and math.isnan(one["p"])
    flat = stats.paired([0, 1], [1, 2])
    assert flat["se"] == 0 and math.isnan(flat["p"])
    with pytest.raises(ValueError):
        stats.paired([1, 2], [1, 2, 3])


def test_holm_hand_worked():
    # sorted 0.01, 0.03, 0.04 -> 3 * 0.01, 2 * 0.03, max(0.06, 1 * 0.04)
    assert stats.holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    adj = stats.holm([0.02, float("nan"), 0.01])  # untested entries do not count
    assert adj[0] == pytest.approx(0.02) and math.isnan(adj[1]) and adj[2] == pytest.approx(0.02)
    assert stats.holm([0.6, 0.7]) == [1.0, 1.0]
    p = RNG.uniform(0, 0.2, size=int(RNG.integers(2, 9)))
    adj = np.asarray(stats.holm(p))
    assert (adj >= p).all() and (adj <= np.minimum(1, len(p) * p) + 1e-12).all()  # between raw and Bonferroni


def test_verdict_words():
    assert stats.verdict(0.02, 0.01) == "helped"
    assert stats.verdict(-0.02, 0.049) == "hurt"
    assert stats.verdict(0.05, 0.051) == "no effect detected"
    assert stats.verdict(0.05, float("nan")) == "not tested"


def test_cli_help():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    res = subprocess.run([sys.executable, "-m", "ee_cuda.repro", "--help"], capture_output=True, text=True,
                         env=env, timeout=120)
    assert res.returncode == 0
    for opt in ("--full", "--dataset", "--losses", "--n", "--seeds", "--checkpoints", "--jobs", "--device", "--out"):
        assert opt in res.stdout


def test_digits_split_is_zero_shot():
    d = data.load_digits()
    assert set(d.y_train.tolist()) == {0, 1, 2, 3, 4} and set(d.y_test.tolist()) == {5, 6, 7, 8, 9}
    assert d.x_train.shape[1:] == (1, 8, 8) and 0 <= float(d.x_train.min()) and float(d.x_train.max()) <= 1


def test_glyph_classes_are_fine_grained_and_many():
    classes = data.glyph_classes()
    assert len(classes) >= 300
    families = {f for _, f, _ in classes}
    assert families == set(data.FAMILIES)
    assert len({(ch, f) for ch, f, _ in classes}) == len(classes)
    chars = {}
    for ch, f, fonts in classes:
        assert len(fonts) >= 3 and all(data.font_family(p) == f for p in fonts)
        chars.setdefault(ch, set()).add(f)
    assert sum(len(f) > 1 for f in chars.values()) > 100  # the same character in several families


def test_glyph_classes_subset_keeps_families_even():
    n = int(RNG.integers(400, 492))
    sub = data.glyph_classes(max_classes=n)
    assert len(sub) == n
    counts = [sum(f == fam for _, f, _ in sub[:30]) for fam in data.FAMILIES]
    assert counts == [10, 10, 10]


def test_glyphs_render_and_split(tmp_path):
    n_classes, per_class = int(RNG.integers(6, 14)) * 2, int(RNG.integers(3, 6))
    seed = int(RNG.integers(100))
    print("seed", seed)
    d = data.load_glyphs(size=16, per_class=per_class, n_classes=n_classes, cache_dir=str(tmp_path), seed=seed)
    tr, te = set(d.y_train.tolist()), set(d.y_test.tolist())
    assert not tr & te and len(tr) + len(te) == n_classes and len(tr) == n_classes // 2
    assert d.x_train.shape == (len(tr) * per_class, 1, 16, 16)
    assert d.describe()["train_images"] == len(tr) * per_class
    assert float(d.x_train.min()) >= 0 and float(d.x_train.max()) <= 1
    ink = d.x_train.flatten(1).sum(1)
    assert bool((ink > 1).all())  # every image shows a glyph
    assert len(set(d.class_names)) == len(d.class_names) == n_classes
    assert {name.split(" ")[1] for name in d.class_names} == set(data.FAMILIES)  # an even share of families
    again = data.load_glyphs(size=16, per_class=per_class, n_classes=n_classes, cache_dir=str(tmp_path), seed=seed)
    assert len(os.listdir(tmp_path)) == 1
    assert torch.equal(d.x_train, again.x_train) and torch.equal(d.y_test, again.y_test)


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
        for c in y.view(-1, K)[:, 0].tolist():  # without replacement where the class has K samples
            rows = [i for i in b if labels[i] == c]
            if int((labels == c).sum()) >= K:
                assert len(set(rows)) == K
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


def test_hphn_selection_ratio_brute_force():
    """HPHN: the anchor's own points are x_i and its n synthetic copies toward x_{i^1}; the negatives are
    every augmented row of another label (docs/design.md §9); count the anchors whose closest pair of the
    two involves a synthetic point."""
    n = int(RNG.integers(1, 4))
    P, K = int(RNG.integers(2, 5)), 2 * int(RNG.integers(1, 3))
    labels = torch.arange(P).repeat_interleave(K)
    B = P * K
    emb = torch.nn.functional.normalize(torch.randn(B, 6, dtype=torch.float64), dim=1)

    def copies(i):  # [x_i, G_1[i], ..., G_n[i]]
        j = i ^ 1
        return [emb[i]] + [torch.nn.functional.normalize(((n + 1 - k) * emb[i] + k * emb[j]) / (n + 1), dim=0)
                           for k in range(1, n + 1)]

    synth = 0
    for i in range(B):
        best = None
        for s, a in enumerate(copies(i)):
            for j in range(B):
                if labels[j] == labels[i]:
                    continue
                for r, b in enumerate(copies(j)):
                    d = float((a - b).norm())
                    if best is None or d < best[0]:
                        best = (d, s > 0 or r > 0)
        synth += best[1]
    assert train.selection_ratio(emb, labels, n, loss="hphn") == (synth, B)
    assert train.selection_ratio(emb, labels, 0, loss="hphn") == (0, B)


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
                assert mat[a, b] == pytest.approx(want)
                continue
            # The matrix's searches run in float32: each d^2 = |x|^2 + |y|^2 - 2<x, y> of unit-scale points is
            # good to about 16 float32 eps, so d to that over 2d (a near-tie may pick the other point pair).
            block = dist[pl == a][:, pl == b]
            tol = float((16 * torch.finfo(torch.float32).eps / (2 * block)).mean())
            assert abs(mat[a, b] - float(block.mean())) <= tol, f"{mat[a, b]} vs {float(block.mean())} (tol {tol})"
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
