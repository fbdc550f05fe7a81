"""Turn the benchmark JSON into ``docs/benchmarks.md`` and the plots ``docs/bench_*.png``.

    python bench/report.py [--bench-json docs/benchmarks/cpu.json] [--cases docs/benchmarks/cpu.cases.json]
                           [--memory-json docs/benchmarks/memory.json] [--gpu docs/benchmarks/gpu.json]
                           [--out docs/benchmarks.md] [--png-dir docs]

Inputs: the pytest-benchmark JSON (``--benchmark-json`` of ``pytest bench/ --benchmark-only``; timings),
the case file the suite writes beside it (``*.cases.json``: every planned case, its status or skip reason,
peak memory, correctness check, machine), optionally the same two files of a run of the memory-bank
workload (``--bench-workloads XBM``; its own run, since it is not in the suite's default), and optionally
the GPU results of ``bench/gpu_bench.py``.
Every number in the report comes from these files; nothing is typed by hand.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from benchlib import (LOSSES, MEMORY, MEMORY_TARGET_M, OPS, PAIR_LOSSES, SWEEP_B, SWEEP_N,  # noqa: E402
                      WORKLOADS, fmt_bytes, fmt_time)

SHORT = {"hard_negative_points": "points", "hard_negative_pairs": "pairs", "HPHNTripletLoss": "HPHN",
         "TripletLoss": "Triplet", "LiftedStructureLoss": "Lifted", "NPairLoss": "N-pair",
         "MultiSimilarityLoss": "MS", "gram": "X@Xᵀ"}
W_TARGET = {"W1": 5.0, "W1b": 5.0, "W2": 50.0}   # speed-up targets of the issues (eager reference / fused)
MEM_TARGET = 1.5
# Memory-bank targets (issue 17), at M = MEMORY_TARGET_M: fused forward+backward within FLOOR_TARGET× the
# cross-Gram floor's (every n); at least XBM_SPEEDUP× the eager reference at n = XBM_SPEEDUP_N; fused peak
# extra memory within MEM_TARGET× the floor's peak plus the op's outputs.
FLOOR_TARGET = 2.0
XBM_SPEEDUP, XBM_SPEEDUP_N = 10.0, 8


def load(args):
    return load_files(args.bench_json, args.cases)


def load_files(bench_json, cases_json):
    with open(cases_json) as f:
        cases = json.load(f)
    stats = {}
    if os.path.exists(bench_json):
        with open(bench_json) as f:
            bj = json.load(f)
        for b in bj.get("benchmarks", []):
            cid = b.get("extra_info", {}).get("id")
            if cid:
                stats[cid] = b["stats"]
    recs = []
    for r in cases["cases"]:
        r = dict(r)
        st = stats.get(r["id"])
        if r.get("status") == "ok" and st is not None:
            r["median_s"] = st["median"]
            r["iqr_s"] = st.get("iqr")
            r["rounds_done"] = st.get("rounds")
        recs.append(r)
    return cases, recs


class Index:
    def __init__(self, recs):
        self.by = {}
        for r in recs:
            if r.get("M"):   # the memory-bank case: its own section (memory_section)
                continue
            self.by[self._key(r["B"], r["D"], r["n"], r["classes"], r["per_class"], r["target"],
                              r.get("config_pairs"), r["impl"], r["mode"])] = r

    @staticmethod
    def _key(B, D, n, classes, per_class, target, config_pairs, impl, mode):
        cp = config_pairs if target in OPS else None
        return (B, D, n, classes, per_class, target, cp, impl, mode)

    def get(self, shape, target, impl, mode, config_pairs="adjacent"):
        B, D, n, classes, per_class = shape
        return self.by.get(self._key(B, D, n, classes, per_class, target, config_pairs, impl, mode))


def median(r):
    if r is None or r.get("status") != "ok":
        return None
    return r.get("median_s")


def status_note(r):
    if r is None:
        return "not planned"
    if r.get("status") == "ok":
        return ""
    reason = r.get("reason") or r.get("status")
    return reason


def cell_time(r):
    m = median(r)
    if m is not None:
        return fmt_time(m)
    if r is None:
        return "—"
    reason = (r.get("reason") or r.get("status") or "").lower()
    if "oom" in reason:
        return "skipped: OOM/over budget"
    if "session time budget" in reason:
        return "skipped: time budget"
    if "per reference call" in reason:
        return "skipped: over budget (slow)"
    if "not built" in reason:
        return "skipped: not built"
    if "error" in (r.get("status") or ""):
        return "error"
    return "skipped"


def ratio(a, b):
    if a is None or b is None or b <= 0:
        return None
    return a / b


def fmt_ratio(x):
    if x is None:
        return "—"
    if x >= 100:
        return f"{x:.0f}×"
    if x >= 10:
        return f"{x:.1f}×"
    return f"{x:.2f}×"


def peak(r):
    if r is None or r.get("status") != "ok":
        return None
    return r.get("peak_bytes")


def shape_of(w):
    return (w["B"], w["D"], w["n"], w["classes"], w["per_class"])


def workload_rows(index, mode):
    rows = []
    for wname in ("W1", "W1b", "W2"):
        w = WORKLOADS[wname]
        shape = shape_of(w)
        gram = index.get(shape, "gram", "torch", mode)
        for target in OPS + LOSSES:
            layouts = w["pairs"] if target in OPS else (None,)
            for layout in layouts:
                cp = layout or "adjacent"
                f = index.get(shape, target, "fused", mode, cp)
                e = index.get(shape, target, "eager", mode, cp)
                c = index.get(shape, target, "compiled", mode, cp)
                if f is None and e is None and c is None:
                    continue
                pairs = (f or e or c)["pairs"]
                rows.append(dict(workload=wname, target=target, pairs=pairs, f=f, e=e, c=c, gram=gram))
    return rows


def table_workloads(index, mode):
    rows = workload_rows(index, mode)
    out = ["| workload | target | pairs | fused | eager ref. | compiled ref. | eager / fused | compiled / fused "
           "| X@Xᵀ floor | fused / floor | peak mem fused | eager | compiled | fused / op budget |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        f, e, c, g = r["f"], r["e"], r["c"], r["gram"]
        mf = median(f)
        budget = (f or {}).get("budget_bytes")
        out.append("| " + " | ".join([
            r["workload"], SHORT[r["target"]], r["pairs"], cell_time(f), cell_time(e), cell_time(c),
            fmt_ratio(ratio(median(e), mf)), fmt_ratio(ratio(median(c), mf)), cell_time(g),
            fmt_ratio(ratio(mf, median(g))), fmt_bytes(peak(f)), fmt_bytes(peak(e)), fmt_bytes(peak(c)),
            (f"{peak(f) / budget:.2f} (of {fmt_bytes(budget)})"
             if peak(f) is not None and budget and r["target"] in OPS else "—"),
        ]) + " |")
    return "\n".join(out), rows


def targets_section(rows_fb):
    """Pass/fail of the issues' targets, from the forward+backward rows."""
    out = ["| check | workload | target | pairs | measured | target | met |", "|---|---|---|---|---|---|---|"]
    verdicts = []
    for r in rows_fb:
        w, t = r["workload"], r["target"]
        goal = W_TARGET.get(w)
        if goal is None:
            continue
        if t in LOSSES and w != "W2":
            continue
        for impl, rec in (("eager", r["e"]), ("compiled", r["c"])):
            if impl == "compiled" and w != "W2":
                continue
            separate = ratio(median(rec), median(r["f"]))
            alongside = (rec or {}).get("fused_alongside_s") if median(rec) is not None else None
            x = ratio(median(rec), alongside) if alongside else separate
            met = None if x is None else x >= goal
            verdicts.append(met)
            shown = cell_time(rec) if x is None else fmt_ratio(x)
            if alongside and separate is not None:
                shown += f" ({fmt_ratio(separate)} against the fused case)"
            out.append(f"| speed-up vs {impl} reference (fwd+bwd) | {w} | {SHORT[t]} | {r['pairs']} | "
                       f"{shown} | ≥ {goal:.0f}× | {'—' if met is None else ('yes' if met else '**no**')} |")
    for r in rows_fb:
        if r["target"] not in OPS:
            continue
        f = r["f"]
        p, budget = peak(f), (f or {}).get("budget_bytes")
        if p is None or not budget:
            continue
        met = p <= MEM_TARGET * budget
        verdicts.append(met)
        out.append(f"| fused peak extra memory / (Gram + outputs + grads) | {r['workload']} | {SHORT[r['target']]} | "
                   f"{r['pairs']} | {p / budget:.2f} ({fmt_bytes(p)} of {fmt_bytes(budget)}) | ≤ {MEM_TARGET} | "
                   f"{'yes' if met else '**no**'} |")
    return "\n".join(out), verdicts


SWEEP_TARGETS = {"n": OPS + ("HPHNTripletLoss", "TripletLoss"), "B": OPS + ("HPHNTripletLoss",)}


def sweep_table(index, axis):
    w = WORKLOADS["W2"]
    values = SWEEP_N if axis == "n" else SWEEP_B
    targets = SWEEP_TARGETS[axis]
    out = [f"| {axis} | target | fused | eager ref. | compiled ref. | eager / fused | X@Xᵀ floor | peak mem fused "
           "| eager | compiled | reference matrix (M²·4 B) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    series = {}
    for v in values:
        shape = (w["B"], w["D"], v, w["classes"], w["per_class"]) if axis == "n" else (v, w["D"], w["n"], v // 4, 4)
        g = index.get(shape, "gram", "torch", "fwdbwd")
        for t in targets:
            recs = {impl: index.get(shape, t, impl, "fwdbwd") for impl in ("fused", "eager", "compiled")}
            if all(r is None for r in recs.values()):
                continue
            any_rec = next(r for r in recs.values() if r is not None)
            M = _ref_points(any_rec)
            out.append("| " + " | ".join([
                str(v), SHORT[t], cell_time(recs["fused"]), cell_time(recs["eager"]), cell_time(recs["compiled"]),
                fmt_ratio(ratio(median(recs["eager"]), median(recs["fused"]))), cell_time(g),
                fmt_bytes(peak(recs["fused"])), fmt_bytes(peak(recs["eager"])), fmt_bytes(peak(recs["compiled"])),
                fmt_bytes(M * M * 4)]) + " |")
            for impl, r in recs.items():
                series.setdefault((t, impl), []).append((v, median(r), peak(r)))
            series.setdefault((t, "matrix"), []).append((v, None, M * M * 4))
        series.setdefault(("gram", "torch"), []).append((v, median(g), peak(g)))
    return "\n".join(out), series


def growth_lines(series, axis):
    """One generated sentence per target: peak-memory growth over the sweep, fused vs reference vs M²."""
    out = []
    for t in SWEEP_TARGETS[axis]:
        parts = []
        mat = {v: b for v, _, b in series.get((t, "matrix"), [])}
        for impl in ("fused", "eager"):
            pts = [(v, b) for v, _, b in series.get((t, impl), []) if b]
            if len(pts) >= 2:
                (v0, b0), (v1, b1) = pts[0], pts[-1]
                grow_m = mat[v1] / mat[v0] if mat.get(v0) else None
                parts.append(f"{impl} ×{b1 / b0:.1f} from {axis}={v0} to {axis}={v1}"
                             + (f" (M² grows ×{grow_m:.0f} there)" if grow_m and impl == "eager" else ""))
        if parts:
            out.append(f"- {SHORT[t]}: peak extra memory " + "; ".join(parts) + ".")
    return "\n".join(out)


def _ref_points(r):
    B, n, t = r["B"], r["n"], r["target"]
    T = n + 2
    if t == "HPHNTripletLoss":
        return (n + 1) * B
    if r["pairs"] == "adjacent":
        return B // 2 * T
    K = r["per_class"]
    return r["classes"] * K * (K - 1) // 2 * T


def plots(series_n, series_B, png_dir):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    styles = {"fused": dict(color="C0", marker="o"), "eager": dict(color="C3", marker="s"),
              "compiled": dict(color="C1", marker="^"), "matrix": dict(color="0.5", ls=":", marker=""),
              "torch": dict(color="k", ls="--", marker="")}
    labels = {"fused": "fused", "eager": "reference (eager)", "compiled": "reference (torch.compile)",
              "matrix": "reference distance matrix M²·4 B", "torch": "X@Xᵀ floor (fwd+bwd)"}
    for axis, series in (("n", series_n), ("B", series_B)):
        targets = SWEEP_TARGETS[axis]
        for what, col in (("time", 1), ("mem", 2)):
            fig, axes = plt.subplots(1, len(targets), figsize=(4.2 * len(targets), 3.6), squeeze=False)
            for ax, t in zip(axes[0], targets):
                impls = ["fused", "eager", "compiled"] + (["matrix"] if what == "mem" else ["torch"])
                for impl in impls:
                    pts = series.get(("gram", "torch") if impl == "torch" else (t, impl), [])
                    pts = [(p[0], p[col]) for p in pts if p[col] is not None and p[col] > 0]
                    if not pts:
                        continue
                    xs, ys = zip(*pts)
                    ax.plot(xs, ys, label=labels[impl], **styles[impl])
                ax.set_yscale("log")
                if axis == "B":
                    ax.set_xscale("log", base=2)
                ax.set_xlabel(axis)
                ax.set_title(SHORT[t] + (" (fwd+bwd)" if what == "time" else " peak extra memory"))
                ax.set_ylabel("seconds (median)" if what == "time" else "bytes")
                ax.grid(True, which="both", alpha=0.3)
            handles = {}
            for ax in axes[0]:
                for h, lab in zip(*ax.get_legend_handles_labels()):
                    handles.setdefault(lab, h)
            if handles:
                axes[0][0].legend(list(handles.values()), list(handles.keys()), fontsize=7)
            sub = ("B=1024, D=512, 256×4, adjacent pairs" if axis == "n"
                   else "D=512, n=8, 4 per class, adjacent pairs")
            fig.suptitle(f"{'time' if what == 'time' else 'memory'} vs {axis} on the CPU ({sub}; the losses use "
                         "their own pairs: HPHN adjacent, Triplet all)", fontsize=9)
            fig.tight_layout()
            name = f"bench_{what}_vs_{axis}.png"
            fig.savefig(os.path.join(png_dir, name), dpi=90)
            plt.close(fig)
            files.append(name)
    return files


def skipped_section(recs):
    out = []
    groups = {}
    for r in recs:
        if r.get("status") == "ok":
            continue
        reason = r.get("reason") or r.get("status")
        key = reason.split(" (")[0] if reason else "?"
        groups.setdefault(key, []).append(r)
    for key, rs in sorted(groups.items(), key=lambda kv: -len(kv[1])):
        out.append(f"- **{key}** ({len(rs)} cases): " + ", ".join(
            f"`{r['id']}`" + (f" ({r['reason'].split(' (', 1)[1].rstrip(')')})" if r.get("reason") and " (" in r["reason"]
                              else "") for r in rs[:60]) + (" …" if len(rs) > 60 else ""))
    return "\n".join(out) if out else "None."


def readiness_section(path):
    """Offline GPU readiness (``bench/sass_stats.py``, before and after a change of the CUDA kernels)."""
    if not os.path.exists(path):
        return "No offline SASS statistics recorded (`docs/benchmarks/sass.json`, from `bench/sass_stats.py`)."
    with open(path) as f:
        g = json.load(f)
    before = {(r["arch"], r["kernel"]): r for r in g["before"]["rows"]}
    out = [f"Read from the built library, no GPU needed: {g['method']}. Before: `{g['before']['rev']}`, after: "
           f"`{g['after']['rev']}`. The innermost loop is the smallest span closed by a backward branch that does "
           "floating-point work; in a search kernel each candidate point loads once from shared memory, so "
           "instructions / shared loads is about the instructions one candidate costs (a float point is one 16-byte "
           "load, a double one two, so for doubles a candidate costs twice that column).", "",
           "| arch | kernel | registers | spill bytes | SASS instructions | innermost loop (shared loads) | "
           "per shared load |", "|---|---|---|---|---|---|---|"]

    def per_load(r):
        return f"{r['inner_loop'] / r['inner_loop_shared_loads']:.0f}" if r.get("inner_loop_shared_loads") else "-"

    after_names = {(r["arch"], r["kernel"]) for r in g["after"]["rows"]}
    gone = sorted({k for a, k in before if (a, k) not in after_names and (a, _one_type(k)) not in after_names})
    for r in g["after"]["rows"]:
        # a kernel whose output type became its accumulation type: <float, float> before is <float> now
        b = before.get((r["arch"], r["kernel"])) or before.get((r["arch"], _two_types(r["kernel"])), {})

        def pair(key, fmt=str):
            old, new = b.get(key), r.get(key)
            return fmt(new) if old == new or old is None else f"{fmt(old)} → {fmt(new)}"
        loop_b = f"{b['inner_loop']} ({b['inner_loop_shared_loads']})" if b else None
        loop_a = f"{r['inner_loop']} ({r['inner_loop_shared_loads']})"
        loops = loop_a if loop_b in (None, loop_a) else f"{loop_b} → {loop_a}"
        loads = per_load(r) if not b or per_load(b) == per_load(r) else f"{per_load(b)} → {per_load(r)}"
        out.append(f"| {r['arch']} | `{r['kernel']}` | {pair('registers')} | {pair('local')} | "
                   f"{pair('instructions')} | {loops} | {loads} |")
    if gone:
        out += ["", "Instantiations of the before build that the after build no longer has: "
                + ", ".join(f"`{k}`" for k in gone) + "."]
    return "\n".join(out)


def ablation_section(path):
    """What each CPU kernel tuning buys (``bench/ablation.py``): each build without one tuning, side by side."""
    if not os.path.exists(path):
        return "No ablation recorded (`docs/benchmarks/ablation.json`, from `bench/ablation.py`)."
    with open(path) as f:
        a = json.load(f)
    base, rows = a["base"], list(a["seconds"][a["base"]])
    builds = [n for n in a["builds"] if n != base]
    out = [f"Each build leaves one tuning out of the kernels of `{a.get('rev', base)}` (the base keeps them all) and "
           f"times the fused forward+backward of the ops on the CPU workloads' rows, {a.get('threads', 1)} thread, "
           f"{len(a['rounds'])} rounds that alternate the builds (each in its own process, each leading a round in "
           f"turn), at least {a.get('min_seconds', 0.6)} s of calls per row, build and round. A cell is the median "
           "over rounds of that round's time of the build / the base's: above 1, leaving the tuning out is slower. "
           "A tuning stays only where it gains at least 10 % on a W1 or W2 row (a cell of at least 1.10) that it can "
           "affect, confirmed where a single cell decided; the others were removed from the kernels. Command: `" + a.get("command", "python bench/ablation.py") + "`.",
           "", "| left out | " + " | ".join(f"{r}" for r in rows) + " | best gain | decision |",
           "|---|" + "---|" * (len(rows) + 2),
           "| (base: seconds per call) | " + " | ".join(fmt_time(a["seconds"][base][r]) for r in rows) + " | | |"]
    for n in builds:
        cells = a["ratio"][n]
        best = max(cells.values())
        kept = a.get("decision", {}).get(n) or ("kept" if best >= 1.10 else "removed")
        what = a.get("left_out", {}).get(n) or n
        out.append(f"| {what} (`{n}`) | " + " | ".join(f"{cells[r]:.2f}" for r in rows)
                   + f" | {(best - 1) * 100:+.0f} % | {kept} |")
    if a.get("notes"):
        out += [""] + [f"- {t}" for t in a["notes"]]
    for v in a.get("versus", []):
        vrows = list(v["seconds"][v["base"]])
        out += ["", f"**{v['title']}**, the same way: {v['rounds']} rounds, at least {v['min_seconds']} s of calls per "
                f"row, build and round; a cell is the build's time / {v['base']}'s (the issue's bar: no W2 row above "
                f"1.15). Command: `{v['command']}`." + (f" {v['note']}" if v.get("note") else ""), "",
                "| build | " + " | ".join(vrows) + " |", "|---|" + "---|" * len(vrows),
                f"| {v['base']} (seconds per call) | " + " | ".join(fmt_time(v["seconds"][v["base"]][r]) for r in vrows)
                + " |"]
        for label, n in v["builds"].items():
            out.append(f"| {label} | " + " | ".join(f"{v['ratio'][n][r]:.2f}" for r in vrows) + " |")
    return "\n".join(out)


def _two_types(kernel):
    """``name<float>`` as ``name<float, float>``: the name a one-type kernel had with an output type too."""
    name, _, args = kernel.partition("<")
    return f"{name}<{args[:-1]}, {args}" if args and "," not in args else kernel


def _one_type(kernel):
    """``name<float, float>`` as ``name<float>`` (see ``_two_types``)."""
    name, _, args = kernel.partition("<")
    parts = args[:-1].split(", ") if args else []
    return f"{name}<{parts[0]}>" if len(parts) == 2 and parts[0] == parts[1] else kernel


def gpu_section(path):
    if not path or not os.path.exists(path):
        return ("No GPU results in this report: this machine has no GPU. On a CUDA machine run "
                "`bash bench/gpu_check.sh` from the repository root (builds with `FORCE_CUDA=1`, runs the CUDA "
                "tests, compute-sanitizer and `python bench/gpu_bench.py`), copy the JSON it writes "
                "(`$OUT/gpu_bench.json`; `OUT` defaults to `ee_gpu_check` in the temporary folder) to "
                "`docs/benchmarks/gpu.json` and rerun "
                "`python bench/report.py`.")
    with open(path) as f:
        g = json.load(f)
    m = g.get("machine", {})
    out = [f"GPU: {m.get('gpu', '?')} ({m.get('gpu_mem_gib', '?')} GiB), torch {m.get('torch')}, CUDA "
           f"{m.get('cuda')}, ee_cuda build {m.get('ee_cuda_build_info')}, commit {m.get('git_commit')}, "
           f"{m.get('date_utc')} UTC. Command: `{m.get('command')}`. Times: CUDA events, median; memory: "
           "`torch.cuda.max_memory_allocated` above the baseline; OOM counts as infinite time.", "",
           "| workload | target | pairs | mode | fused | eager ref. | compiled ref. | eager / fused | compiled / fused "
           "| X@Xᵀ floor | mem fused | mem eager | mem compiled |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    rows = {}
    for r in g.get("results", []):
        rows.setdefault((r["config"], r["target"], r["pairs"], r["mode"]), {})[r["impl"]] = r
    floors = {(r["config"], r["mode"]): r for r in g.get("results", []) if r["target"] == "gram"}

    def t(r):
        if r is None:
            return "—"
        if r.get("oom"):
            return "OOM"
        if r.get("time_s") is None:
            return r.get("status", "—")
        return fmt_time(r["time_s"])

    def tv(r):
        if r is None or r.get("time_s") is None:
            return None
        return math.inf if r.get("oom") else r["time_s"]

    for (cfg, target, pairs, mode), d in rows.items():
        if target == "gram":
            continue
        f, e, c = d.get("fused"), d.get("eager"), d.get("compiled")
        fl = floors.get((cfg, mode))
        out.append("| " + " | ".join([cfg, SHORT.get(target, target), pairs, mode, t(f), t(e), t(c),
                                      fmt_ratio(ratio(tv(e), tv(f))) if tv(e) != math.inf else "∞",
                                      fmt_ratio(ratio(tv(c), tv(f))) if tv(c) != math.inf else "∞",
                                      t(fl), fmt_bytes((f or {}).get("peak_bytes")),
                                      fmt_bytes((e or {}).get("peak_bytes")),
                                      fmt_bytes((c or {}).get("peak_bytes"))]) + " |")
    launches = g.get("launches")
    if launches:
        out += ["", "Kernel launches per op call on W1 (torch.profiler; target ≤ 3 per op call):", "",
                "| op | pairs | mode | entry | kernels / call | memset+memcpy / call |", "|---|---|---|---|---|---|"]
        for L in launches:
            out.append(f"| {SHORT.get(L['target'], L['target'])} | {L['pairs']} | {L['mode']} | {L.get('entry', '')} | "
                       f"{L['kernels_per_call']:.1f} | {L['other_per_call']:.1f} |")
    return "\n".join(out)


def _load(x):
    return "/".join(f"{v:.1f}" for v in x) if x else "?"


def run_lines(m, cases, n_ok, skipped, met):
    """A run's command block, machine lines and summary line (cases timed, skipped, targets met)."""
    return ["```", f"{m.get('command')}", "python bench/report.py", "```", "", *machine_lines(m),
            f"- Run: {m.get('date_utc')} UTC, {cases.get('elapsed_s')} s; {n_ok} cases timed, {skipped}. "
            f"Targets met: {sum(1 for v in met if v)} of {len(met)} checked."]


def machine_lines(m):
    """The machine, threads and software bullets of a run's ``machine`` record."""
    info = m.get("ee_cuda_build_info", {})
    return [
        f"- Machine: {m.get('cpu_model', '?')}, {m.get('cpu_count')} cores, {m.get('mem_total_gib')} GiB RAM, "
        f"{m.get('platform')}; shared with other jobs (load average {_load(m.get('loadavg_start'))} at the start, "
        f"{_load(m.get('loadavg_end'))} at the end), so single timings are noisy — the ratios are medians measured "
        f"side by side in the same run.",
        f"- Threads: {m.get('torch_threads')} torch thread(s) for every implementation"
        + (" (`--bench-threads 1`, the default: with a second OpenMP thread on this shared machine every parallel "
           "region waits for the busy core, and small ops take 10-50× longer)" if m.get('torch_threads') == 1 else "")
        + ".",
        f"- Software: Python {m.get('python')}, torch {m.get('torch')}; ee_cuda at commit `{m.get('git_commit')}`"
        + (f" plus uncommitted changes to {', '.join(f'`{x}`' for x in m['git_dirty'])}" if m.get("git_dirty") else "")
        + ", "
        f"build_info `cpu={info.get('cpu')}, cuda={info.get('cuda')}`, library built {m.get('ee_cuda_lib_mtime_utc')} "
        f"UTC; fused backend forced: `{m.get('fused_backend')}`."
        + ("" if m.get("ee_cuda_path", "ee_cuda") == "ee_cuda" else
           " The package was imported from a copy of the working tree outside the repository (via `PYTHONPATH`), "
           "so that a rebuild during the run could not replace the library under it."),
    ]


def memory_records(path, main_recs):
    """The memory-bank case's records and machine: from its own run's files when they exist, else from the
    main run (when it included the workload XBM). ``(None, [])`` when neither has any."""
    if path and os.path.exists(os.path.splitext(path)[0] + ".cases.json"):
        cases, recs = load_files(path, os.path.splitext(path)[0] + ".cases.json")
        return cases, [r for r in recs if r.get("M")]
    recs = [r for r in main_recs if r.get("M")]
    return (None, recs) if recs else (None, [])


def verdict(met):
    return "—" if met is None else ("yes" if met else "**no**")


def memory_section(path, main_cases, main_recs):
    """The memory-bank case (a reference set of M rows): table, targets, command and machine."""
    cases, recs = memory_records(path, main_recs)
    w = MEMORY
    if not recs:
        return ("No memory-bank results in this report. Run `pytest bench/bench_ops.py --benchmark-only "
                "--bench-workloads XBM --bench-no-sweeps --benchmark-json=docs/benchmarks/memory.json` and "
                "rerun `python bench/report.py`."), []
    cases = cases or main_cases
    m = cases["machine"]
    by = {(r.get("ref_grad", True), r["M"], r["n"], r["target"], r["impl"]): r for r in recs
          if r["mode"] == "fwdbwd"}
    variants = [rg for rg in (False, True) if any(r.get("ref_grad", True) == rg for r in recs)]
    Ms = sorted({r["M"] for r in recs})
    ns = sorted({r["n"] for r in recs})
    any_rec = recs[0]
    B, D, classes, K = any_rec["B"], any_rec["D"], any_rec["classes"], any_rec["per_class"]
    C = any_rec.get("ref_classes") or w["dataset_classes"]
    times = {1: "once", 2: "twice"}
    repeats = ", ".join(f"{M // 2} distinct classes at M={M}" if M // 2 <= C
                        else f"every class {times.get((M // 2) // C, f'{(M // 2) // C} times')} at M={M}"
                        if (M // 2) % C == 0 else f"every class about {(M // 2) / C:.1f} times at M={M}"
                        for M in Ms)

    def floor_of(rg, M, n, f):
        """The floor's time for the fused case f: timed alongside it, else the floor's own case."""
        g = by.get((rg, M, n, "gram", "torch"))
        alongside = (f or {}).get("floor_alongside_s") if median(f) is not None else None
        return alongside, median(g), g

    def yes_no(rg):
        return "yes" if rg else "no (detached)"

    table = ["| ref_X grad | M | n | op | fused | eager ref. | compiled ref. | X@ref_Xᵀ floor | fused / floor "
             "| eager / fused | compiled / fused | peak mem fused | eager | compiled | floor "
             "| fused / (floor + outputs) | reference matrix |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    checks, verdicts = [], []
    for rg in variants:
        for M in Ms:
            for n in ns:
                for t in OPS:
                    f, e, c = (by.get((rg, M, n, t, impl)) for impl in ("fused", "eager", "compiled"))
                    if f is None and e is None and c is None:
                        continue
                    fl_along, fl_own, g = floor_of(rg, M, n, f)
                    mf = median(f)
                    x_floor = ratio(mf, fl_along) if fl_along else ratio(mf, fl_own)
                    sep_floor = ratio(mf, fl_own)
                    speed = {}
                    for impl, rec in (("eager", e), ("compiled", c)):
                        along = (rec or {}).get("fused_alongside_s") if median(rec) is not None else None
                        speed[impl] = (ratio(median(rec), along) if along else ratio(median(rec), mf),
                                       ratio(median(rec), mf))
                    out_b = (f or e or c).get("output_bytes") or 0
                    budget = peak(g) + out_b if peak(g) is not None else None
                    mem_x = ratio(peak(f), budget)
                    P, Q, T = B // 2, M // 2, n + 2
                    table.append("| " + " | ".join([
                        yes_no(rg), str(M), str(n), SHORT[t], cell_time(f), cell_time(e), cell_time(c), cell_time(g),
                        fmt_ratio(x_floor), fmt_ratio(speed["eager"][0]), fmt_ratio(speed["compiled"][0]),
                        fmt_bytes(peak(f)), fmt_bytes(peak(e)), fmt_bytes(peak(c)), fmt_bytes(peak(g)),
                        "—" if mem_x is None else f"{mem_x:.2f} (of {fmt_bytes(budget)})",
                        f"{P * T}×{Q * T}: {fmt_bytes(P * T * Q * T * 4)}"]) + " |")
                    if M != MEMORY_TARGET_M:
                        continue
                    head = f"| {yes_no(rg)} | {M} | {n} | {SHORT[t]} |"
                    met = None if x_floor is None else x_floor <= FLOOR_TARGET
                    shown = "—" if x_floor is None else fmt_ratio(x_floor) + (
                        f" ({fmt_ratio(sep_floor)} against the floor case)" if fl_along and sep_floor else "")
                    verdicts.append(met)
                    checks.append(f"| fused / cross-Gram floor (fwd+bwd) {head} {shown} | "
                                  f"≤ {FLOOR_TARGET:.0f}× | {verdict(met)} |")
                    if n == XBM_SPEEDUP_N:
                        x, sep = speed["eager"]
                        met = None if x is None else x >= XBM_SPEEDUP
                        shown = cell_time(e) if x is None else fmt_ratio(x) + (
                            f" ({fmt_ratio(sep)} against the fused case)" if (e or {}).get("fused_alongside_s")
                            and sep is not None else "")
                        verdicts.append(met)
                        checks.append(f"| speed-up vs eager reference (fwd+bwd) {head} {shown} | "
                                      f"≥ {XBM_SPEEDUP:.0f}× | {verdict(met)} |")
                    met = None if mem_x is None else mem_x <= MEM_TARGET
                    shown = "—" if mem_x is None else (f"{mem_x:.2f} ({fmt_bytes(peak(f))} of {fmt_bytes(peak(g))} + "
                                                       f"{fmt_bytes(out_b)})")
                    verdicts.append(met)
                    checks.append(f"| fused peak extra memory / (floor peak + outputs) {head} "
                                  f"{shown} | ≤ {MEM_TARGET} | {verdict(met)} |")
    grads = []
    for rg in variants:
        checked = [r for r in recs if r.get("checked") and r.get("ref_grad", True) == rg and r["mode"] == "fwdbwd"]
        if not checked:
            continue
        names = [k for k in ("dX", "dref_X") if any(f"rel_err_{k}" in r for r in checked)]
        worst = ", ".join(f"`{k}` {max(r.get(f'rel_err_{k}', 0.0) for r in checked):.1e}" for k in names)
        grads.append(f"ref_X grad {'yes' if rg else 'no'}: {len(checked)} reference cases checked, gradients "
                     f"compared {' and '.join(f'`{k}`' for k in names)}, largest relative error {worst}")
    met = [v for v in verdicts if v is not None]
    n_ok = sum(1 for r in recs if r.get("status") == "ok")
    skipped = [r for r in recs if r.get("status") != "ok"]
    out = [
        f"The searches against a reference set (`ref_X`, `ref_pairs`, `ref_labels`: a memory bank, as in XBM), "
        f"fused vs the pure-PyTorch twin (`ee_cuda.reference.<op>(..., ref_X=...)`: all `(n+2)·P` query points and "
        f"`(n+2)·Q` reference points materialized, and the full distance matrix between them), eager and under "
        f"`torch.compile`, against the floor: the cross-Gram `X @ ref_X.T` forward+backward (against a fixed random "
        f"`B×M` output gradient), which the fused kernel pays as well. Batch: B={B}, D={D}, {classes} classes × {K} "
        f"(a PK sampler with K={K}), adjacent pairs (P={B // 2}); memory: M ∈ {{{', '.join(str(v) for v in Ms)}}} "
        f"rows in the adjacent layout (Q = M/2 pairs) labelled from {C} classes in a seeded random order "
        f"({repeats}; the batch's {classes} classes are among them, as in XBM, "
        f"whose memory holds the current batch); rows L2-normalized random normal, float32, CPU. "
        f"Forward+backward differentiates `dist` against a fixed random gradient (zero where `dist = inf`), in two "
        f"variants, the column *ref_X grad* of the tables:",
        "",
        "- **ref_X grad: no** — only `X` requires grad, `ref_X` is detached. **This is XBM's case**: the memory "
        "holds embeddings of past batches, enqueued detached, and only the current batch is differentiated. "
        "The library then skips the `dref_X = dGᵀ X` product and the reference's own gradient entries. The floor "
        "is the forward product and one backward product, `dX = dG ref_X`; the checks compare `dX` only."
        + ("" if False in variants else " *(Not in this run.)*"),
        "- **ref_X grad: yes** — both `X` and `ref_X` require grad (a memory that is itself trained, or a "
        "reference set that is a second batch). The floor has both backward products, `dX = dG ref_X` and "
        "`dref_X = dGᵀ X`; the checks compare `dX` and `dref_X`."
        + ("" if True in variants else " *(Not in this run.)*"),
        "",
        "Every case is checked against the fused result of its variant first (relative error of each compared "
        "gradient ≤ 1e-2" + (f"; {'; '.join(grads)}" if grads else "") + "). Each fused case times the floor "
        "of its variant alongside (5 calls just before its rounds and 5 just after), and each reference case the "
        "fused op, as for the targets above.",
        "",
        *run_lines(m, cases, n_ok, f"{len(skipped)} skipped", met),
        "",
        f"Targets at M={MEMORY_TARGET_M}: fused forward+backward within {FLOOR_TARGET:.0f}× the floor's (every n; "
        f"the floor timed alongside the fused case, in brackets the ratio against the floor's own case), at "
        f"n={XBM_SPEEDUP_N} at least {XBM_SPEEDUP:.0f}× faster than the eager reference (timed alongside, as above), "
        f"and fused peak extra memory within {MEM_TARGET}× the floor's peak (its `B×M` product and its gradients: "
        f"`dX` and `dref_X`, or `dX` alone when detached) plus the op's outputs (`dist` + int64 `index`); each "
        f"variant against its own floor.",
        "",
        "| check | ref_X grad | M | n | target | measured | goal | met |",
        "|---|---|---|---|---|---|---|---|",
        *checks,
        "",
        "Forward + backward, median; ratios of the fused op to the floor as in the targets (timed alongside), "
        "reference / fused against the fused op timed alongside; the reference matrix is its `(P·T) × (Q·T)` "
        "float32 distance matrix.",
        "",
        *table,
    ]
    if skipped:
        out += ["", "Skipped: " + "; ".join(f"`{r['id']}` ({r.get('reason') or r.get('status')})" for r in skipped)
                + "."]
    return "\n".join(out), verdicts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bench-json", default=os.path.join(ROOT, "docs", "benchmarks", "cpu.json"))
    ap.add_argument("--cases", default=None, help="default: <bench-json without .json>.cases.json")
    ap.add_argument("--memory-json", default=os.path.join(ROOT, "docs", "benchmarks", "memory.json"),
                    help="pytest-benchmark JSON of the memory-bank run (its cases file beside it); when missing, "
                         "the memory-bank records of the main run, if any")
    ap.add_argument("--gpu", default=os.path.join(ROOT, "docs", "benchmarks", "gpu.json"))
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "benchmarks.md"))
    ap.add_argument("--png-dir", default=os.path.join(ROOT, "docs"))
    ap.add_argument("--note", default=None, help="a sentence added under the title (e.g. what is missing)")
    args = ap.parse_args(argv)
    if args.cases is None:
        args.cases = os.path.splitext(args.bench_json)[0] + ".cases.json"
    cases, recs = load(args)
    index = Index(recs)
    m = cases["machine"]
    fb_table, fb_rows = table_workloads(index, "fwdbwd")
    fw_table, _ = table_workloads(index, "fwd")
    tgt_table, verdicts = targets_section(fb_rows)
    mem_text, _ = memory_section(args.memory_json, cases, recs)
    mem_own_run = memory_records(args.memory_json, [])[0] is not None
    recs = [r for r in recs if not r.get("M")]   # the memory-bank case is reported in its own section
    n_table, series_n = sweep_table(index, "n")
    B_table, series_B = sweep_table(index, "B")
    os.makedirs(args.png_dir, exist_ok=True)
    pngs = plots(series_n, series_B, args.png_dir)
    rel = os.path.relpath(args.png_dir, os.path.dirname(os.path.abspath(args.out)))
    n_ok = sum(1 for r in recs if r.get("status") == "ok")
    n_skip = sum(1 for r in recs if r.get("status") != "ok")
    met = [v for v in verdicts if v is not None]
    bench_rel = os.path.relpath(args.bench_json, ROOT)
    cases_rel = os.path.relpath(args.cases, ROOT)
    mem_rel = (os.path.relpath(args.memory_json, ROOT), os.path.relpath(os.path.splitext(args.memory_json)[0]
                                                                          + ".cases.json", ROOT))
    lines = [
        "# Benchmarks",
        "",
        "<!-- Generated by `python bench/report.py` from "
        f"`{bench_rel}` and `{cases_rel}`"
        + (f" (the memory-bank section from `{mem_rel[0]}` and `{mem_rel[1]}`)" if mem_own_run else "")
        + "; do not edit by hand. -->",
        "",
    ]
    if args.note:
        lines += [args.note, ""]
    lines += [
        "Fused kernels of `ee_cuda` against the plain pure-PyTorch reference (materialized augmented points and "
        "the full distance matrix), eager and under `torch.compile`, on the workloads of "
        "[design §12](design.md#12-benchmark-workloads) and sweeps of `n` and `B`"
        + (", and on a memory bank (a reference set, from its own run: see [its section](#memory-bank-reference-set)). "
           "All other numbers below come from one run:" if mem_own_run else ". All numbers below come from one run:"),
        "",
        *run_lines(m, cases, n_ok, f"{n_skip} skipped (listed at the end, with the reason)", met),
        "",
        "## Targets",
        "",
        "Speed-ups are `median(reference) / median(fused)` of forward+backward, with the fused op timed alongside "
        "the reference (its calls just before and just after the reference's; in brackets, the ratio against the "
        "fused case of the tables below, timed minutes apart: see Method); the memory budget of an op is the "
        "`B×B` Gram matrix plus its outputs (`dist` + int64 `index`), plus `dX` and the output gradient. (The losses "
        "hold further `B×B` / `P×P` intermediates of their own; the memory target is the ops'.)",
        "",
        tgt_table,
        "",
        "## Forward + backward (workloads of design §12)",
        "",
        fb_table,
        "",
        "## Forward only (inference, input without grad)",
        "",
        fw_table,
        "",
        "## Sweep of n (forward + backward; W2 shape: B=1024, D=512, 256 classes × 4, adjacent pairs)",
        "",
        "The reference's distance matrix has `M = P·(n+2)` rows for the ops (`P = B/2` adjacent pairs), "
        "`M = (n+1)·B` for HPHN (the official `embedding_aug` rows) and `M = P_all·(n+2)` for the pair losses "
        "(all 6 pairs per class), so its memory grows as `M²`; the fused ops hold the `B×B` Gram matrix and "
        "their outputs only. `n=8` is W2's row.",
        "",
        n_table,
        "",
        growth_lines(series_n, "n"),
        "",
        f"![time vs n]({rel}/bench_time_vs_n.png)",
        "",
        f"![memory vs n]({rel}/bench_mem_vs_n.png)",
        "",
        "## Sweep of B (forward + backward; D=512, n=8, 4 per class, adjacent pairs)",
        "",
        B_table,
        "",
        growth_lines(series_B, "B"),
        "",
        f"![time vs B]({rel}/bench_time_vs_B.png)",
        "",
        f"![memory vs B]({rel}/bench_mem_vs_B.png)",
        "",
        "## Memory bank (reference set)",
        "",
        mem_text,
        "",
        "## GPU",
        "",
        gpu_section(args.gpu),
        "",
        "### GPU readiness (offline: registers, spills, SASS)",
        "",
        readiness_section(os.path.join(ROOT, "docs", "benchmarks", "sass.json")),
        "",
        "## What each tuning buys (CPU kernels)",
        "",
        ablation_section(os.path.join(ROOT, "docs", "benchmarks", "ablation.json")),
        "",
        "## Method",
        "",
        "- **Implementations.** *fused*: `ee_cuda.<op>(..., backend=\"fused\")` and the `ee_cuda.losses` modules "
        "under `use_backend(\"fused\")`. *eager reference*: `ee_cuda.reference.<op>` for the ops; for HPHN the "
        "port of the official loss (`ee_cuda.reference.losses.hphn_triplet`: `embedding_aug` rows and their full "
        "distance matrix); for the pair losses the same `ee_cuda.losses` module under `use_backend(\"reference\")` "
        "(loss formulas over the reference ops: materialized points, `torch.cdist`). The test oracle "
        "`ee_cuda.reference.losses.<pair loss>` (loop-based `cdist` plus a full dot-product matrix) is slower "
        "still — minutes per call on W1 with all pairs — so the faster plain form is the baseline. *compiled*: "
        "the eager reference wrapped in `torch.compile(dynamic=False)`; compilation happens in the untimed "
        "first call.",
        "- **Inputs.** float32, rows L2-normalized random normal, labels `classes × per_class` in the adjacent "
        "layout; ops take `positive_pairs(labels, pairs)`; HPHN uses the adjacent pairs, the pair losses all "
        "positive pairs (their default). Forward+backward differentiates the op's `dist` against a fixed random "
        "gradient (zero where `dist = inf`), or the loss.",
        "- **Correctness before timing.** Every case's output (and `dX`) is compared with the fused result on the "
        "same inputs: distances and loss values to 1e-4, indices identical (≤ 0.1 % near-ties), `dX` relative "
        "error ≤ 1e-2; a case that fails is reported as an error, not timed.",
        "- **Timing.** pytest-benchmark `pedantic`, after the checked warm-up call: fused cases ~1 s of rounds "
        "(≥ 3 rounds, iterations for calls under 5 ms), reference cases ~3 s (1 round for calls over 3 s, whose "
        "single timed call is the one checked). Median reported. Python's cyclic garbage collector is off during "
        "the timed calls of every implementation (as `timeit` does; `bench/conftest.py` sets pytest-benchmark's "
        "`--benchmark-disable-gc`). While timing, glibc's mmap and trim thresholds are pinned at 32 and 64 MiB, "
        "the values its dynamic thresholds settle at in a training loop (so freed blocks under 32 MiB are "
        "reused, not unmapped or trimmed and faulted in again each call). Cases run in priority order under a time "
        "budget (`--bench-budget`); what does not fit is skipped and listed.",
        "- **Speed-ups timed alongside.** Each reference case also times the fused op on the same inputs: 5 calls "
        "(after a warm-up) just before the reference's timing and 5 just after, median; the targets divide by "
        "that. This machine is shared, and its speed drifts by tens of percent over the minutes between a fused "
        "case and its reference's (the W2 `X@Xᵀ` floor has read 18.9 to 20.7 ms in different runs, 14.5 ms on a quiet machine); "
        "a ratio of timings taken minutes apart measures that drift as well as the code. The tables keep the "
        "fused cases' own medians.",
        "- **Memory (CPU).** Peak extra resident memory of one call: `malloc_trim`, every free heap chunk of a "
        "page or more allocated and held untouched during the call, reset of the kernel's high-water mark through "
        "`/proc/self/clear_refs`, then `VmHWM - VmRSS(before)`, so native allocations (ATen, the extension's "
        "buffers, `torch.compile` kernels) are counted. Holding the free chunks makes every request of a page or "
        "more land on fresh memory (blocks of 64 KiB or more are mapped, and unmapped when freed): without it a "
        "request might or might not land on the resident pages of a block freed earlier in the call, and one "
        "call read anywhere from its live peak to the sum of its temporaries, depending on the heap's history "
        "(the memory bank's M=16384, n=2, detached points case: 9.4 or 17.2 MiB, the same build). Blocks under "
        "64 KiB freed during the call stay resident (a later request may reuse them or not), and a request under "
        "a page may land on a resident fragment (not counted): the reading is the pages the call's allocations "
        "touch, within those small blocks, and it can read under the live allocations where most are small. For W1 "
        "points \"all\" (allocations mostly under 64 KiB), a malloc trace of one forward+backward measures a live "
        "peak of 512 KiB; over four runs of the same calls this meter read 380 to 564 KiB, and without the held "
        "chunks 600 to 624 (against the traced peak, that case's ratio to its budget is 1.01). "
        "The previous call's `dX` is released just before "
        "(`X.grad = None`, as `zero_grad(set_to_none=True)` does before a training step), so that whether "
        "the allocator returns its pages to the OS is not counted in or out of the next call's peak.",
        "",
        "## Skipped and not run",
        "",
        skipped_section(recs),
        "",
    ]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print(f"wrote {args.out} and {', '.join(pngs)} in {args.png_dir}")


if __name__ == "__main__":
    main()
