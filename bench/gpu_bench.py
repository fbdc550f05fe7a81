"""Stand-alone GPU benchmark of ee_cuda (no pytest): docs/design.md §12: W1, W1b, W2, W3 on CUDA, and XBM.

    python bench/gpu_bench.py [--device cuda] [--workloads W1,W1b,W2,W3,XBM] [--losses] [--budget-s 240]
                              [--json PATH] [--quick]
    python bench/gpu_bench.py --print PATH      # the short table of an earlier run

For every workload and pair layout, ``hard_negative_points`` and ``hard_negative_pairs`` (and with
``--losses`` the five losses), forward and forward+backward: fused vs the pure-PyTorch reference eager vs
the reference under ``torch.compile``, plus one float32 ``X @ X.T`` as the floor. The workload ``XBM`` is
the memory-bank case (``benchlib.MEMORY``: the ops against a reference set of 4096 / 16384 rows, forward+backward
with gradients to ``X`` and ``ref_X``, and to ``X`` alone with the memory detached as in XBM (configs
``XBM[...,detached]``), the cross-Gram ``X @ ref_X.T`` as the floor, with the same gradients); its fused cases and floor
come after the workloads' fused ones, its reference cases after the workloads' compiled forward+backward
(eager) or last (compiled). Each case is checked
against the fused result before timing (``benchlib.compare``), warmed up (compiled in that call), then
timed with CUDA events (median of rounds). Peak memory: ``torch.cuda.max_memory_allocated`` above the
memory allocated before the call. Out of memory (raised, or predicted from the reference's
``M × M`` matrices exceeding the card) counts as infinite time. Kernel launches per op call on W1 are
counted with ``torch.profiler`` (device kernels, and memsets/memcpys apart) for the public op (argument
checks included) and for ``torch.ops.ee_cuda.<op>`` alone; the target is <= 3 per op call.

``--device cpu --quick`` runs the same code on tiny shapes with ``time.perf_counter`` (to test it
without a GPU). Results go to ``--json``, else ``$OUT/gpu_bench.json`` when ``$OUT`` is set, else
``gpu_bench.json``; the short table is printed last.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
try:
    import ee_cuda  # noqa: F401
except ImportError:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402

import benchlib as bl  # noqa: E402

T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:7.1f}s] {msg}", flush=True)


def is_oom(exc):
    return isinstance(exc, (torch.cuda.OutOfMemoryError, MemoryError)) or "out of memory" in str(exc).lower() \
        or "can't allocate memory" in str(exc)


def timed_call(step, device):
    """Seconds of one call: CUDA events on a GPU (the host waits at the end), perf_counter on the CPU."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t = time.perf_counter()
    step()
    return time.perf_counter() - t


class Runner:
    def __init__(self, args, device):
        self.args, self.device = args, device
        self.results, self.expected = [], {}
        self.meter = bl.CudaMeter(device) if device.type == "cuda" else bl.RSSMeter()
        self.mem_total = (torch.cuda.get_device_properties(device).total_memory if device.type == "cuda"
                          else 20 * 2**30)

    def left(self):
        return self.args.budget_s - (time.monotonic() - T0)

    def expected_for(self, cfg, target):
        key = (cfg.key(), target)
        if key not in self.expected:
            X, labels, pairs, grad = bl.setup_case(cfg, target, self.device)
            fn = bl.build_fn(cfg, target, "fused", labels, pairs)
            step, _ = bl.make_step(cfg, target, "fwdbwd", fn, X, grad)
            self.expected[key] = bl.snapshot(step())
        return self.expected[key]

    def run(self, cfg, target, impl, mode):
        rec = dict(config=cfg.name, B=cfg.B, D=cfg.D, n=cfg.n, classes=cfg.classes, per_class=cfg.per_class,
                   pairs=bl.target_pairs(cfg, target), target=target, impl=impl, mode=mode, time_s=None,
                   oom=False, peak_bytes=None, status="ok")
        if cfg.memory:
            rec.update(M=cfg.M, ref_classes=cfg.ref_classes, ref_grad=cfg.ref_grad and mode == "fwdbwd",
                       output_bytes=bl.output_bytes(cfg, target))
        self.results.append(rec)
        need_s = {"compiled": 45.0, "eager": 8.0}.get(impl, 2.0)
        if self.left() < need_s:
            rec["status"] = f"skipped: time budget spent ({max(self.left(), 0):.0f} s left, ~{need_s:.0f} s needed)"
            return rec
        if impl in ("eager", "compiled"):
            need = bl.est_ref_bytes(cfg, target, mode)
            if need > self.mem_total:
                rec.update(oom=True, time_s=math.inf, status=f"OOM (predicted: ~{need / 2**30:.0f} GiB)")
                return rec
        t0 = time.monotonic()
        try:
            self._run(rec, cfg, target, impl, mode)
        except Exception as exc:  # noqa: BLE001
            if is_oom(exc):
                rec.update(oom=True, time_s=math.inf, status="OOM")
            else:
                rec["status"] = f"error: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
                traceback.print_exc()
        finally:
            if impl == "compiled":
                torch._dynamo.reset()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        rec["wall_s"] = round(time.monotonic() - t0, 2)
        log(f"{cfg.label():14s} {target:22s} {mode:6s} {impl:8s} "
            f"{bl.fmt_time(rec['time_s']):>10s}  mem {bl.fmt_bytes(rec['peak_bytes']):>10s}  {rec['status']}")
        return rec

    def _run(self, rec, cfg, target, impl, mode):
        X, labels, pairs, grad = bl.setup_case(cfg, target, self.device)
        fn = bl.build_fn(cfg, target, "eager" if impl == "torch" else impl, labels, pairs)
        step, _ = bl.make_step(cfg, target, mode, fn, X, grad)
        t = time.monotonic()
        res = step()
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        rec["first_call_s"] = round(time.monotonic() - t, 3)
        if target != "gram" and impl != "fused":
            rec.update(bl.compare(self.expected_for(cfg, target), bl.snapshot(res), target, mode))
            rec["checked"] = True
        del res
        t1 = timed_call(step, self.device)
        self.meter.start()
        step()
        rec["peak_bytes"] = self.meter.stop()
        per_case = self.args.case_s
        rounds = int(max(1, min(self.args.max_rounds, per_case / max(t1, 1e-6))))
        if t1 * 3 <= per_case:
            rounds = max(rounds, 3)
        times = [timed_call(step, self.device) for _ in range(rounds)]
        rec.update(time_s=statistics.median(times), rounds=rounds, min_s=min(times), max_s=max(times))


def count_launches(device, cfg, target, mode, raw):
    """Device kernels (and memsets/memcpys) per call of an op, from torch.profiler over 5 calls."""
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    X, labels, pairs, grad = bl.setup_case(cfg, target, device)
    if raw:
        op = getattr(torch.ops.ee_cuda, target)
        pl, ll, n = pairs.long(), labels.long(), cfg.n

        def fn(Z):
            return op(Z, pl, ll, n, True)
    else:
        fn = bl.build_fn(cfg, target, "fused", labels, pairs)
    step, _ = bl.make_step(cfg, target, mode, fn, X, grad)
    for _ in range(2):
        step()
    torch.cuda.synchronize()
    calls = 5
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(calls):
            step()
        torch.cuda.synchronize()
    kernels = other = launches = 0
    names = {}
    for e in prof.events():
        if e.device_type == DeviceType.CUDA:
            if "memset" in e.name.lower() or "memcpy" in e.name.lower():
                other += 1
            else:
                kernels += 1
                names[e.name[:60]] = names.get(e.name[:60], 0) + 1
        elif e.name in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx"):
            launches += 1
    return dict(config=cfg.name, target=target, pairs=cfg.pairs, mode=mode,
                entry=("torch.ops.ee_cuda" if raw else "public op"), kernels_per_call=kernels / calls,
                other_per_call=other / calls, launch_api_per_call=launches / calls,
                kernel_names={k: v / calls for k, v in sorted(names.items(), key=lambda kv: -kv[1])[:12]})


def plan(args, device):
    """Cases in priority order: fused and the floor (W3's first), eager reference, compiled reference (fwd+bwd
    first)."""
    if args.quick:
        configs = [c for c in bl.quick_configs() if c.group == "workload"]
        if "XBM" in args.workloads.split(","):
            configs += bl.quick_memory_configs()
    else:
        configs = bl.workload_configs(args.workloads.split(","), "cuda" if device.type == "cuda" else "cpu")
        if device.type != "cuda":
            configs = [c for c in configs if c.name != "W3"]
    # W3 first: its fused cases and floor are what the GPU run is for, and must not be cut by the budget
    configs.sort(key=lambda c: c.name != "W3")
    targets = list(bl.OPS) + (list(bl.LOSSES) if args.losses else [])
    impls = args.impls.split(",")
    tiers = []
    for cfg in configs:
        for t in bl.targets_for(cfg):
            if t not in targets and t != "gram":
                continue
            for mode in (("fwdbwd",) if cfg.memory else ("fwdbwd", "fwd")):
                if t == "gram":
                    tiers.append((1 if cfg.memory else 0, cfg, t, "torch", mode))
                    continue
                for impl in impls:
                    if cfg.memory:
                        tiers.append(({"fused": 1, "eager": 5}.get(impl, 11), cfg, t, impl, mode))
                        continue
                    loss = t in bl.LOSSES
                    if impl == "fused":
                        tier = 1 if loss else 0
                    elif impl == "eager":
                        tier = (2 if mode == "fwdbwd" else 3) + (4 if loss else 0)
                    else:
                        big = cfg.name in ("W2", "W3", "Q1")
                        tier = (4 if mode == "fwdbwd" and big else 5 if mode == "fwdbwd" else 6) + (4 if loss else 0)
                    tiers.append((tier, cfg, t, impl, mode))
    tiers.sort(key=lambda x: x[0])
    return tiers


def _finite(o):
    """JSON without Infinity: an OOM's time is stored as null next to ``"oom": true``."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list):
        return [_finite(v) for v in o]
    return o


def table(results, launches=None):
    rows = {}
    for r in results:
        rows.setdefault((r["config"], r["pairs"] if r["target"] != "gram" else "", r["target"], r["mode"]),
                        {})[r["impl"]] = r

    def t(r):
        if r is None:
            return "-"
        if r.get("oom"):
            return "OOM"
        if r.get("time_s") is None:
            return "skip" if "skip" in r.get("status", "") else "err"
        return bl.fmt_time(r["time_s"])

    def ratio(a, b):
        if a is None or b is None or a.get("time_s") is None or b.get("time_s") is None:
            return "-"
        if a.get("oom"):
            return "inf"
        return f"{a['time_s'] / b['time_s']:.1f}x" if b["time_s"] > 0 else "-"

    lines = [f"{'config':6s} {'pairs':8s} {'target':20s} {'mode':6s} {'fused':>10s} {'eager':>10s} {'compiled':>10s} "
             f"{'eag/fus':>8s} {'cmp/fus':>8s} {'floor':>10s} {'mem fused':>10s} {'mem eager':>10s}"]
    floors = {(r["config"], r["mode"]): r for r in results if r["target"] == "gram"}
    for (cfg, pairs, target, mode), d in rows.items():
        if target == "gram":
            continue
        f, e, c = d.get("fused"), d.get("eager"), d.get("compiled")
        lines.append(f"{cfg:6s} {pairs:8s} {target[:20]:20s} {mode:6s} {t(f):>10s} {t(e):>10s} {t(c):>10s} "
                     f"{ratio(e, f):>8s} {ratio(c, f):>8s} {t(floors.get((cfg, mode))):>10s} "
                     f"{bl.fmt_bytes((f or {}).get('peak_bytes')):>10s} {bl.fmt_bytes((e or {}).get('peak_bytes')):>10s}")
    for L in launches or []:
        lines.append(f"launches {L['config']} {L['pairs']:8s} {L['target']:20s} {L['mode']:6s} {L['entry']:17s}: "
                     f"{L['kernels_per_call']:.1f} kernels/call (+{L['other_per_call']:.1f} memset/memcpy; "
                     f"target <= 3)")
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--workloads", default="W1,W1b,W2,W3,XBM",
                    help="comma-separated workloads (docs/design.md §12) and XBM, the memory-bank case")
    ap.add_argument("--impls", default="fused,eager,compiled")
    ap.add_argument("--losses", action="store_true", help="also the five losses (after the ops)")
    ap.add_argument("--quick", action="store_true", help="tiny shapes (to test the script)")
    ap.add_argument("--budget-s", type=float, default=240.0, help="wall seconds for all cases")
    ap.add_argument("--case-s", type=float, default=0.5, help="timed seconds per case (rounds = this / call)")
    ap.add_argument("--max-rounds", type=int, default=50)
    ap.add_argument("--no-launches", action="store_true")
    ap.add_argument("--json", default=None)
    ap.add_argument("--print", default=None, metavar="PATH", help="print the table of a results JSON and exit")
    args = ap.parse_args(argv)
    if args.print:
        with open(args.print) as f:
            g = json.load(f)
        print(table(g["results"], g.get("launches")))
        return 0
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("gpu_bench: no CUDA device", file=sys.stderr)
        return 2
    ok, why = bl.fused_available(device)
    if not ok:
        print(f"gpu_bench: {why}", file=sys.stderr)
        return 2
    out_path = args.json or (os.path.join(os.environ["OUT"], "gpu_bench.json") if os.environ.get("OUT")
                             else "gpu_bench.json")
    runner = Runner(args, device)
    info = bl.machine_info(device)
    log(f"machine: {info}")
    launches = []
    status = 0

    def dump():
        payload = {"machine": info, "budget_s": args.budget_s, "elapsed_s": round(time.monotonic() - T0, 1),
                   "results": runner.results, "launches": launches}
        os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
        with open(out_path, "w") as f:
            json.dump(_finite(payload), f, indent=1, default=str)

    try:
        if device.type == "cuda" and not args.no_launches:
            for cfg in bl.workload_configs(["W1"], "cuda"):
                for target in bl.OPS:
                    for mode in ("fwd", "fwdbwd"):
                        for raw in (False, True):
                            try:
                                L = count_launches(device, cfg, target, mode, raw)
                                launches.append(L)
                                log(f"launches {cfg.label()} {target} {mode} {L['entry']}: "
                                    f"{L['kernels_per_call']:.1f} kernels/call, {L['other_per_call']:.1f} other; "
                                    f"{L['kernel_names']}")
                            except Exception as exc:  # noqa: BLE001
                                log(f"launch count failed for {target} {mode}: {exc}")
        for tier, cfg, target, impl, mode in plan(args, device):
            runner.run(cfg, target, impl, mode)
            dump()
    except KeyboardInterrupt:
        status = 130
    finally:
        dump()
    for r in runner.results:
        if r["status"].startswith("error"):
            status = status or 1
    log(f"wrote {out_path}")
    print(table(runner.results, launches))
    return status


if __name__ == "__main__":
    sys.exit(main())
