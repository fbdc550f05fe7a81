"""``report.md`` of a reproduction run, written from the JSON files of its experiments only.

``write_report(out_dir)`` reads ``run_info.json`` and ``expN_*.json`` in ``out_dir`` and writes
``report.md`` beside them; no result in it is typed by hand. The verdicts are those of
``ee_cuda.repro.stats`` (paired t test over seeds, Holm's correction within each table).
"""
from __future__ import annotations

import json
import math
import os

from .stats import ALPHA
from .train import LOSS_TITLES

__all__ = ["write_report"]

# R@1 gains from EE that the paper reports on Cars196 with an ImageNet-pretrained GoogLeNet: a citation,
# printed beside this harness's results, not one of them.
PAPER_GAIN_POINTS = {"triplet": "about +11 to +12", "hphn": "about +11 to +12"}
PAPER_SETTING = "Cars196, ImageNet-pretrained GoogLeNet"

def _load(out_dir, name):
    path = os.path.join(out_dir, name + ".json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _fig(lines, out_dir, name, caption):
    if os.path.exists(os.path.join(out_dir, name + ".png")):
        lines += ["", f"![{caption}]({name}.png)", ""]


def _pts(x, signed=True):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:+.1f}" if signed else f"{100 * x:.1f}"


def _p(p):
    if p is None or (isinstance(p, float) and math.isnan(p)):
        return "n/a"
    return f"{p:.3f}" if p >= 0.001 else "<0.001"


def _delta(c):
    """``Δ ± SE [CI]`` of a paired comparison, in points."""
    return f"{_pts(c['mean'])} ± {_pts(c['se'], False)} [{_pts(c['ci'][0])}, {_pts(c['ci'][1])}]"


def _mse(ms):
    return f"{_pts(ms[0], False)} ± {_pts(ms[1], False)}"


def _environment(r) -> str:
    bi = r.get("build_info", {})
    return (f"torch {r['torch']}, Python {r['python']}; ee_cuda ops backend `{bi.get('backend')}` "
            f"(fused CPU kernels: {bi.get('cpu')}, fused CUDA kernels: {bi.get('cuda')})")


def _experiment_list(es) -> str:
    es = sorted(es)
    if len(es) > 2 and es == list(range(es[0], es[-1] + 1)):
        return f"experiments {es[0]}–{es[-1]}"
    return ("experiment " if len(es) == 1 else "experiments ") + ", ".join(map(str, es))


def _invocations(info) -> list:
    """The header's lines on how the folder's results were produced: one invocation, or (results added
    with ``--experiments``) each invocation with the experiments it wrote."""
    records = info.get("invocations") or [info]
    L = []
    for r in records:
        L += [f"- Command: `{r['command']}`" + (f" ({_experiment_list(r['experiments'])})" if len(records) > 1 else ""),
              f"- Started {r['started_utc']}, wall time {r['wall_seconds'] / 60:.1f} min: {r['runs']} runs "
              f"({r['runs_trained']} trained in this invocation), {r['jobs']} at a time, "
              f"{r['threads_per_job']} torch thread(s) each, {r['cpu_count']} CPU cores visible, device "
              f"`{r['device']}`{', ' + r['device_name'] if r.get('device_name') else ''}."]
    envs = list(dict.fromkeys(_environment(r) for r in records))
    if len(envs) == 1:
        return L + [f"- {envs[0]}."]
    return L + [f"- {_experiment_list(r['experiments'])}: {_environment(r)}." for r in records]


def _all_paired(out_dir) -> bool:
    """Whether every compared pair of runs in experiments 1, 3, 4 and 9 shared weights and batches."""
    rows = (_load(out_dir, "exp1_losses") or {}).get("final", [])
    for name in ("exp3_l2_norm", "exp4_n_sweep"):
        rows += (_load(out_dir, name) or {}).get("comparisons", [])
    rows += (_load(out_dir, "exp9_memory_bank") or {}).get("curves", [])
    return all(r["same_batches"] for r in rows)


def _verdict(c, smoke, words=None):
    """The verdict of a comparison as the report prints it: none on a smoke set."""
    if smoke:
        return "— (smoke set)"
    return (words or {}).get(c["verdict"], c["verdict"])


def _names(names):
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names) or "no loss"


def _memory_setting(e9) -> str:
    opts = ", ".join(f"{k} {v:g}" for k, v in e9["loss_options"].items())
    return (f"{LOSS_TITLES[e9['loss']]}{' (' + opts + ')' if opts else ''}, n = {e9['n_inner']}, a memory of "
            f"{e9['memory_size']} rows, objective in-batch loss + {e9['memory_weight']:g} × memory loss, "
            f"{len(e9['seeds'])} paired seeds")


def _summary(L, e1, e2, smoke, e9=None):
    L += ["", "## Summary", ""]
    if smoke:
        L += [f"`{e1['dataset']['name']}` is a smoke set: the tables below are printed, but no verdict is drawn "
              "from them.", ""]
        return
    last_by_loss = {r["loss"]: r for r in e1["final"]}
    best_by_loss = {r["loss"]: r for r in e1["best"]}
    k_main = len(e1["per_seed"][e1["main_loss"]]["seeds"])
    L += [f"Verdicts on R@1 of the test classes at each loss's last checkpoint, paired over seeds "
          f"(Δ = EE − plain in points, mean ± SE [95% t interval]); a verdict needs a Holm-corrected "
          f"p < {ALPHA} over the {len(e1['final'])} losses. These are the report's only verdicts on the losses.", ""]
    for loss, r in last_by_loss.items():
        b = best_by_loss[loss]
        opts = e1["loss_options"].get(loss, {})
        cfg = ", ".join(f"{k} {v:g}" for k, v in opts.items())
        L += [f"- **{LOSS_TITLES[loss]}**{' (' + cfg + ')' if cfg else ''}, {r['k']} seeds, "
              f"{r['iteration']} iterations: EE **{r['verdict']}**: Δ R@1 {_delta(r)}, p = {_p(r['p'])}, "
              f"Holm {_p(r['p_holm'])}; at each run's best checkpoint Δ {_delta(b)} ({b['verdict']})."]
    groups = {}
    for lo, r in last_by_loss.items():
        groups.setdefault(r["verdict"], []).append(LOSS_TITLES[lo])
    L += ["", f"In short: EE helped {_names(groups.get('helped', []))}; it hurt {_names(groups.get('hurt', []))}; "
          f"no effect was detectable with these seeds for {_names(groups.get('no effect detected', []))}"
          + (f"; not testable (equal differences on every seed, or one seed): {_names(groups['not tested'])}"
             if "not tested" in groups else "")
          + f". The main comparison is {LOSS_TITLES[e1['main_loss']]} over {k_main} paired seeds."]
    if e9:
        r, b = e9["final"], e9["best"]
        L += ["", f"**With a memory bank** (experiment 9, beyond the paper: {_memory_setting(e9)}; both variants "
              f"with the memory; Holm over its last and best checkpoint): at {r['iteration']} iterations EE "
              f"**{r['verdict']}**: Δ R@1 {_delta(r)}, p = {_p(r['p'])}, Holm {_p(r['p_holm'])}; at each run's best "
              f"checkpoint Δ {_delta(b)} ({b['verdict']})."]
    L += ["", f"**Against the paper** ({PAPER_SETTING}, as the paper reports; this harness measures something "
          "else):", "",
          "| loss | Δ R@1 here (last checkpoint) | paper's reported gain |", "| --- | --- | --- |"]
    for loss, r in last_by_loss.items():
        L += [f"| {LOSS_TITLES[loss]} | {_pts(r['mean'])} | {PAPER_GAIN_POINTS.get(loss, 'not quoted here')} |"]
    L += ["", "The settings differ in everything but the method: here a 3-block network is trained from scratch for "
          "at most a few thousand iterations on 16x16 renderings of glyphs; the paper fine-tunes an "
          "ImageNet-pretrained network on photographs, whose embedding is well clustered from the start. The "
          "harness can therefore say what EE does under these budgets, not whether the paper's figures hold."]
    if e2 and "EE" in e2["results"]:
        v = e2["results"]["EE"]
        i = len(e2["checkpoints"]) - 1
        d = v["difference"][i]
        L += ["", f"On the EE models at {e2['checkpoints'][i]} iterations, synthetic points between same-class test "
              f"images retrieve an original of their class (R@1) {_delta(d)} points more often than the originals "
              "themselves do (experiment 2): "
              + ("the interval includes zero, no difference detected." if not d["ci"][0] > 0 and not d["ci"][1] < 0
                 else "they carry their class's label more reliably than the originals, as the paper's experiment 2 "
                 "reports." if d["mean"] > 0
                 else "they carry their class's label less reliably than the originals, so some synthetic negatives "
                 "are mislabelled.")]


def _memory_section(L, e9, e1, smoke):
    """Experiment 9: its curve, its two tests, its last checkpoint's metrics, and experiment 1's in-batch
    comparison of the same loss beside it when that is in the folder (read, not tested again)."""
    ref = {}
    if e1 and e1.get("n_inner") == e9["n_inner"] and e9["loss"] in e1["per_seed"]:
        ref = {c["iteration"]: c for c in e1["curves"] if c["loss"] == e9["loss"]}
    B = e9["batch_rows"]
    M = e9["memory_size"]
    L += ["## 9. EE with a memory bank", "",
          f"Beyond the paper: {_memory_setting(e9)}. Both variants train with a cross-batch memory (XBM, Wang et al., "
          f"CVPR 2020; `ee_cuda.losses.CrossBatchMemory`) of the last {M} embeddings ({M / B:g} batches of {B}), "
          f"{e9['memory_start']}; every batch is enqueued (detached) before its loss, and the memory loss takes "
          "the batch's anchors and positives and its negatives from the memory, the current batch included (with "
          "EE, the synthetic points of the memory's adjacent pairs too). Objective: "
          f"`{e9['objective']}`. The two variants of a seed start from the same weights and see the same batches "
          "(the memory draws from no generator), as experiment 1's runs of that seed do. Δ = EE + memory − "
          "plain + memory, in points, mean ± SE [95% t interval]; p on the curve uncorrected; the tests are the "
          "last checkpoint and each run's best one, Holm over the two."
          + (" The last columns repeat experiment 1's in-batch comparison of the same loss at the same iteration "
             f"({next(iter(ref.values()))['k']} seeds), for reference: not tested again here."
             if ref else ""), "",
          "| iterations | seeds | plain + memory | EE + memory | Δ R@1 | p (uncorrected) |"
          + (" in-batch plain / EE | in-batch Δ |" if ref else ""),
          "| --- | --- | --- | --- | --- | --- |" + (" --- | --- |" if ref else "")]
    for c in e9["curves"]:
        r = ref.get(c["iteration"])
        L += [f"| {c['iteration']} | {c['k']} | {_pts(c['a_mean'], False)} | {_pts(c['b_mean'], False)} | "
              f"{_delta(c)} | {_p(c['p'])} |"
              + ((f" {_pts(r['a_mean'], False)} / {_pts(r['b_mean'], False)} | {_pts(r['mean'])} ± "
                  f"{_pts(r['se'], False)} |" if r else " n/a | n/a |") if ref else "")]
    L += ["", "| test (R@1) | plain + memory | EE + memory | Δ | p | Holm | verdict |",
          "| --- | --- | --- | --- | --- | --- | --- |"]
    for t, name in ((e9["final"], f"last checkpoint ({e9['final']['iteration']})"), (e9["best"], "best checkpoint")):
        L += [f"| {name} | {_pts(t['a_mean'], False)} | {_pts(t['b_mean'], False)} | {_delta(t)} | {_p(t['p'])} | "
              f"{_p(t['p_holm'])} | {_verdict(t, smoke)} |"]
    b = e9["best"]
    L += ["", f"Best at (plain / EE, per seed): {', '.join(map(str, b['plain_best_at']))} / "
          f"{', '.join(map(str, b['ee_best_at']))}.", "",
          "Last checkpoint, all metrics (mean ± SE over seeds, %; Δ is the paired mean difference):", "",
          "| metric | plain + memory | EE + memory | Δ |", "| --- | --- | --- | --- |"]
    r = e9["final"]
    for m, name in (("nmi", "NMI"), ("f1", "F1"), ("recall@1", "R@1"), ("recall@2", "R@2"), ("recall@4", "R@4"),
                    ("recall@8", "R@8")):
        L += [f"| {name} | {_mse(r[m]['plain'])} | {_mse(r[m]['ee'])} | "
              f"{_pts(r[m]['delta']['mean'])} ± {_pts(r[m]['delta']['se'], False)} |"]
    t = e9["seconds_per_100_iterations"]
    L += ["", f"Training time with the memory, seconds per 100 iterations (mean over seeds): plain {t['plain']:.2f}, "
          f"EE {t['ee']:.2f} (a rough guide, as in experiment 1)."]


def write_report(out_dir: str) -> str:
    """Write ``report.md`` from the ``expN_*.json`` and ``run_info.json`` files in ``out_dir``."""
    L = []
    info = _load(out_dir, "run_info") or {}
    cfg = info.get("config", {})
    e1 = _load(out_dir, "exp1_losses")
    smoke = bool(e1) and e1["dataset"]["name"] != "glyphs"
    L += ["# Embedding Expansion on offline data: reproduction report", ""]
    L += ["This file is generated by `ee_cuda.repro.report.write_report` from the JSON files next to it; no result "
          "in it is typed by hand (rewrite it with `python -m ee_cuda.repro --report-only --out <folder>`). "
          "Test sets hold classes never seen in training (the paper's zero-shot protocol)."]
    if info:
        L += [""] + _invocations(info)
    e9 = _load(out_dir, "exp9_memory_bank")
    if e1:
        _summary(L, e1, _load(out_dir, "exp2_synthetic_labels"), smoke, e9)
    if cfg and e1:
        d = e1["dataset"]
        P, K = cfg["batch"]
        L += ["", "## Setup", "",
              "| dataset | image | train classes / images | test classes / images |", "| --- | --- | --- | --- |",
              f"| {d['name']} | {d['image_size'][0]}x{d['image_size'][1]} | {d['train_classes']} / {d['train_images']} "
              f"| {d['test_classes']} / {d['test_images']} |", ""]
        if d["name"] == "glyphs":
            L += ["- `glyphs`: a class is a character (Latin, digits, Greek, Cyrillic, symbols) in one font family "
                  "(sans, serif or mono: the DejaVu, STIX and Computer Modern files that matplotlib and the OS ship); "
                  "its images are that character in the family's fonts with random size, rotation and shift. The "
                  "same character in two families is two classes, so many test classes differ only in stroke "
                  "detail. Classes are split at random into disjoint train and test halves."]
        else:
            L += ["- `digits`: scikit-learn's handwritten digits, train on 0-4, test on 5-9: a smoke set only."]
        L += [f"- Network (`ee_cuda.repro.models.EmbeddingNet`, from scratch): 3 conv-BN-ReLU blocks (width "
              f"{cfg['width']}), a linear layer to {cfg['embedding_dim']} dimensions, BatchNorm, L2 normalization; "
              f"Adam, learning rate {cfg['lr']}; batches of {P} classes x {K} images (rows 2k, 2k+1 share a label).",
              f"- EE: n = {cfg['n_inner']} synthetic points per positive pair, L2-normalized. Loss options: "
              + ("; ".join(f"{LOSS_TITLES[lo]}: " + ", ".join(f"{k} = {v:g}" for k, v in o.items())
                           for lo, o in cfg["loss_options"].items()) or "library defaults")
              + "; every other setting is the library's default.",
              "- Paired design: for every seed, the plain and the EE run (and every ablation variant) start from the "
              "same weights and see the same batches, in the same order; the JSON holds each run's digests of both"
              + (" (checked equal for every compared pair)." if _all_paired(out_dir)
                 else " (**not equal for every compared pair: see the `same_batches` fields of the JSON**).")
              + " Every comparison uses the per-seed differences: mean ± standard error, a two-sided t test and a "
              "95% t interval with seeds − 1 degrees of freedom, and Holm's correction over the comparisons of its "
              f"table (family-wise α = {ALPHA}).",
              "- Clustering metrics: k-means (scikit-learn) with k = number of test classes; R@K by Euclidean nearest "
              "neighbours excluding the query. \"Best checkpoint\" picks each run's highest test R@1, as the official "
              "code reports; it is optimistic by construction and shown beside the last checkpoint."]
    if e1:
        L += ["", "## 1. Each loss with and without EE", "",
              "The learning curves: R@1 (%) on the test classes at every checkpoint; Δ = EE − plain in points, "
              "mean ± SE [95% t interval]; p: paired t test, uncorrected. They describe how the effect develops; the "
              "verdicts are the summary's, at the last checkpoint.", "",
              "| loss | iterations | seeds | plain | EE | Δ R@1 | p (uncorrected) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
        for c in e1["curves"]:
            L += [f"| {LOSS_TITLES[c['loss']]} | {c['iteration']} | {c['k']} | {_pts(c['a_mean'], False)} | "
                  f"{_pts(c['b_mean'], False)} | {_delta(c)} | {_p(c['p'])} |"]
        L += ["", "Last checkpoint, all metrics (mean ± SE over seeds, %; Δ is the paired mean difference):", "",
              "| loss | metric | plain | EE | Δ |", "| --- | --- | --- | --- | --- |"]
        for r in e1["final"]:
            for m, name in (("nmi", "NMI"), ("f1", "F1"), ("recall@1", "R@1"), ("recall@2", "R@2"),
                            ("recall@4", "R@4"), ("recall@8", "R@8")):
                L += [f"| {LOSS_TITLES[r['loss']]} | {name} | {_mse(r[m]['plain'])} | {_mse(r[m]['ee'])} | "
                      f"{_pts(r[m]['delta']['mean'])} ± {_pts(r[m]['delta']['se'], False)} |"]
        L += ["", "Best checkpoint of each run (R@1; Holm over the losses):", "",
              "| loss | plain | EE | Δ R@1 | Holm | verdict | best at (plain / EE, per seed) |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
        for b in e1["best"]:
            L += [f"| {LOSS_TITLES[b['loss']]} | {_pts(b['a_mean'], False)} | {_pts(b['b_mean'], False)} | "
                  f"{_delta(b)} | {_p(b['p_holm'])} | {_verdict(b, smoke)} | "
                  f"{', '.join(map(str, b['plain_best_at']))} / "
                  f"{', '.join(map(str, b['ee_best_at']))} |"]
        L += ["", "Training time, seconds per 100 iterations (mean over seeds, including the network; measured while "
              "another run trains on the other core, so only a rough guide):", "",
              "| loss | plain | EE |", "| --- | --- | --- |"]
        for loss, s in e1["per_seed"].items():
            t = s["seconds_per_100_iterations"]
            L += [f"| {LOSS_TITLES[loss]} | {t['plain']:.2f} | {t['ee']:.2f} |"]
        _fig(L, out_dir, "exp1_losses", "R@1 by checkpoint, plain vs EE, and the paired difference")
    e2 = _load(out_dir, "exp2_synthetic_labels")
    if e2:
        L += ["## 2. Labels of synthetic points", "",
              f"R@1 (%) on the test classes of synthetic points (n points between random same-class pairs, queried "
              f"against all originals except the pair's own two endpoints) and of the originals (leave-one-out); "
              f"{LOSS_TITLES[e2['loss']]}, mean over seeds {e2['seeds']}; Δ = synthetic − original, paired over "
              "seeds (mean ± SE).", "",
              "| model | iterations | original | synthetic | Δ |", "| --- | --- | --- | --- | --- |"]
        for name, v in e2["results"].items():
            for i, c in enumerate(e2["checkpoints"]):
                o = sum(s[i] for s in v["original"]) / len(v["original"])
                s_ = sum(s[i] for s in v["synthetic"]) / len(v["synthetic"])
                d = v["difference"][i]
                L += [f"| {name} (n = {v['n_probe']}) | {c} | {_pts(o, False)} | {_pts(s_, False)} | "
                      f"{_pts(d['mean'])} ± {_pts(d['se'], False)} |"]
        _fig(L, out_dir, "exp2_synthetic_labels", "R@1 of synthetic vs original points by checkpoint")
    main_last = e1["final"][0]["iteration"] if e1 else None
    e3 = _load(out_dir, "exp3_l2_norm")
    if e3:
        L += ["## 3. L2 normalization of synthetic points", "",
              f"{LOSS_TITLES[e3['loss']]}, {len(e3['seeds'])} paired seeds, at {e3['iteration']} iterations"
              + (f" (the main comparison: {main_last})" if main_last and main_last != e3["iteration"] else "")
              + "; mean ± SE, %; verdicts corrected over the three comparisons.", "",
              "| variant | NMI | F1 | R@1 | R@2 | R@4 | R@8 |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in e3["rows"]:
            L += [f"| {r['variant']} | " + " | ".join(_mse(r[k]) for k in ("nmi", "f1", "recall@1", "recall@2",
                                                                          "recall@4", "recall@8")) + " |"]
        L += ["", "| comparison (R@1) | Δ | p | Holm | verdict |", "| --- | --- | --- | --- | --- |"]
        for c in e3["comparisons"]:
            L += [f"| {c['b']} − {c['a']} | {_delta(c)} | {_p(c['p'])} | {_p(c['p_holm'])} | "
                  f"{_verdict(c, smoke, {'helped': 'higher', 'hurt': 'lower'})} |"]
        _fig(L, out_dir, "exp3_l2_norm", "L2 normalization on/off")
    e4 = _load(out_dir, "exp4_n_sweep")
    if e4:
        L += ["## 4. Number of synthetic points n", "",
              f"{LOSS_TITLES[e4['loss']]}, {len(e4['seeds'])} paired seeds, at {e4['iteration']} iterations"
              + (f" (the main comparison: {main_last})" if main_last and main_last != e4["iteration"] else "")
              + "; n = 0 is the plain loss; mean ± SE, %; verdicts corrected over the values of n.", "",
              "| n | NMI | F1 | R@1 | R@2 | R@4 | R@8 |",
              "| --- | --- | --- | --- | --- | --- | --- |"]
        for r in e4["rows"]:
            L += [f"| {r['n_inner']} | " + " | ".join(_mse(r[k]) for k in ("nmi", "f1", "recall@1", "recall@2",
                                                                          "recall@4", "recall@8")) + " |"]
        L += ["", "| n vs plain (R@1) | Δ | p | Holm | verdict |", "| --- | --- | --- | --- | --- |"]
        for c in e4["comparisons"]:
            L += [f"| {c['n_inner']} | {_delta(c)} | {_p(c['p'])} | {_p(c['p_holm'])} | {_verdict(c, smoke)} |"]
        _fig(L, out_dir, "exp4_n_sweep", "Metrics and paired differences by n")
    e5 = _load(out_dir, "exp5_selection_ratio")
    if e5:
        L += ["## 5. Selection ratio of synthetic points", "",
              f"Share of the hard negatives {LOSS_TITLES[e5['loss']]} chooses in training that involve a synthetic "
              "point (the anchor's own synthetic copy or a synthetic negative), over the batches since the previous "
              f"checkpoint; mean ± SE over seeds {e5['seeds']}, %.", "",
              "| n | " + " | ".join(str(c) for c in e5["checkpoints"]) + " |",
              "| --- | " + " | ".join("---" for _ in e5["checkpoints"]) + " |"]
        for n, c in e5["curves"].items():
            L += [f"| {n} | " + " | ".join(_mse((m, s)) for m, s in zip(c["mean"], c["se"])) + " |"]
        _fig(L, out_dir, "exp5_selection_ratio", "Selection ratio by checkpoint")
    e6 = _load(out_dir, "exp6_hard_negative_heatmap")
    if e6:
        L += ["## 6. Hard-negative distances between classes", "",
              f"A fixed probe batch of {len(e6['probe_classes'] or [])} training classes; off-diagonal: mean "
              "hard-negative distance between two classes' positive pairs; diagonal: mean positive distance. The maps "
              f"(seed {e6['seed']}, at " + ", ".join(map(str, e6["checkpoints_shown"])) + " iterations) search each "
              "model with its own n (0 plain, n EE), so EE's hardest negatives include synthetic points and are "
              "closer by construction; the rows \"originals only\" search both models with n = 0, where their "
              f"distances compare. The table averages seeds {e6['summary_seeds']}.", "",
              "| model | mean hard-negative distance, first → last | closest class pair, first → last | "
              "mean positive distance, first → last |", "| --- | --- | --- | --- |"]
        for name, s in e6["summary"].items():
            L += [f"| {name} | {s['mean_hard_negative'][0]:.3f} → {s['mean_hard_negative'][-1]:.3f} | "
                  f"{s['closest_pair'][0]:.3f} → {s['closest_pair'][-1]:.3f} | "
                  f"{s['mean_positive'][0]:.3f} → {s['mean_positive'][-1]:.3f} |"]
        _fig(L, out_dir, "exp6_hard_negative_heatmap", "Class x class hard-negative distance")
    e7 = _load(out_dir, "exp7_occlusion")
    if e7:
        L += ["## 7. Robustness to occlusion", "",
              "R@1 on the test classes with a zeroed square patch whose side is the given share of the image side, "
              "at a random position; the models of experiment 1 at its last checkpoint. Cells: Δ = EE − plain in "
              "points, mean ± SE; marked * where Holm's correction over the occluded cells leaves p < 0.05 (the 0% "
              "column is experiment 1's comparison, tested there).", "",
              "| loss | plain R@1 at 0% | " + " | ".join(f"Δ at {100 * f:g}%" for f in e7["fractions"]) + " |",
              "| --- | --- | " + " | ".join("---" for _ in e7["fractions"]) + " |"]
        for loss in dict.fromkeys(c["loss"] for c in e7["comparisons"]):
            cs = [c for c in e7["comparisons"] if c["loss"] == loss]
            L += [f"| {LOSS_TITLES[loss]} | {_pts(cs[0]['a_mean'], False)} | " + " | ".join(
                f"{_pts(c['mean'])} ± {_pts(c['se'], False)}"
                f"{'*' if not smoke and c['verdict'] in ('helped', 'hurt') else ''}"
                for c in cs) + " |"]
        _fig(L, out_dir, "exp7_occlusion", "R@1 under occlusion")
    e8 = _load(out_dir, "exp8_cost")
    if e8:
        bi = e8.get("build_info", {})
        cuda = e8["device"].startswith("cuda")
        L += ["## 8. Training time and memory by n", "",
              f"One training step on a batch of {e8['rows'][0]['batch']} (device `{e8['device']}`, {e8['threads']} "
              "thread(s)); median over the timed iterations; with the fused ops and with the pure-PyTorch reference "
              "(every synthetic point and the full distance matrix materialized), where the fused kernels are built "
              f"(fused CPU: {bi.get('cpu')}, CUDA: {bi.get('cuda')}). Memory = bytes autograd saves for backward "
              "(distinct storages; transient workspace inside a kernel is not counted)"
              + (", and peak CUDA allocation" if cuda else "") + ". Timings on a shared machine are noisy.", "",
              "| loss | backend | n | training step (ms) | loss fwd+bwd (ms) | saved for backward, step (MiB) | "
              "saved, loss only (MiB) |" + (" CUDA peak (MiB) |" if cuda else ""),
              "| --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if cuda else "")]
        for r in e8["rows"]:
            L += [f"| {LOSS_TITLES[r['loss']]} | {r['backend']} | {r['n_inner']} | "
                  f"{1e3 * r['seconds_per_iteration']:.1f} | {r['loss_ms']:.1f} | "
                  f"{r['saved_bytes_step'] / 2 ** 20:.2f} | {r['saved_bytes_loss'] / 2 ** 20:.3f} |"
                  + (f" {r['cuda_peak_bytes'] / 2 ** 20:.1f} |" if r.get("cuda_peak_bytes") else "")]
        _fig(L, out_dir, "exp8_cost", "Time and memory by n")
    if e9:
        _memory_section(L, e9, e1, smoke)
        _fig(L, out_dir, "exp9_memory_bank", "R@1 with a memory bank, plain vs EE, and the paired difference")
    L += ["", "## Caveats", "",
          "- Small networks trained from scratch for minutes on 16x16 images, not the paper's ImageNet-pretrained "
          "GoogLeNet/BN-Inception on CUB-200, Cars-196 and SOP: absolute numbers are not comparable to the paper's, "
          "only the paired with/without-EE comparison under equal budgets is.",
          "- \"No effect detected\" means the paired interval is compatible with zero at the corrected level for this "
          "many seeds, not that the effect is zero; the intervals say how large an effect the data still allow.",
          "- On the CPU, a rerun on the same machine reproduces every result but the timings; another machine can "
          "differ through the fonts installed and floating-point order (CPU instruction set). CUDA runs are not "
          "bitwise reproducible (cuDNN and atomic reductions).",
          "- The ablations (experiments 3-6) use the first seeds of the main loss, and experiments 3-4 may stop "
          "earlier than the main comparison: their verdicts answer their own question, at their own length."]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(L).replace("\n\n\n", "\n\n") + "\n")
    return path
