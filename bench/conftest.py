"""pytest-benchmark suite of ee_cuda on the CPU: ``pytest bench/ --benchmark-only``.

Kept out of the default test run: ``pyproject.toml`` sets ``testpaths = ["tests"]``, and the benchmark
modules are named ``bench_*.py``, collected only by the hook below (when ``bench/`` is given explicitly
or with ``--benchmark-only``).

Every case (config × target × impl × mode, see ``benchlib``) is planned before the run: the fused
cases and the Gram floor always run; reference cases run by priority while their estimated cost fits
``--bench-budget`` seconds (default 640, so the whole run stays near 12 minutes on the project's 2-core
CPU); a case whose reference would need more than ``--bench-max-gib`` GiB or ``--bench-max-call`` seconds
per call is skipped as "OOM/over budget". Cases run in priority order. Each case:

1. checks correctness before timing: the case's output (and ``dX`` for forward+backward) is compared
   with the fused result on the same inputs (``benchlib.compare``); the first call is also the warm-up
   (and the compilation, for ``compiled``). A reference call predicted over 3 s gets no separate warm-up:
   its single timed call is checked afterwards;
2. measures the peak extra memory of one call (``benchlib.RSSMeter``: high-water mark of the resident
   set above the baseline, reset through ``/proc/self/clear_refs``);
3. times rounds with ``benchmark.pedantic`` (median reported); a reference case also times the fused op
   on the same inputs just before and just after (``fused_alongside_s``, what the speed-up targets use), and
   a fused case of the memory-bank workload times its floor, the cross-Gram ``X @ ref_X.T`` forward+backward
   (gradients to the same inputs as the case: ``X`` and ``ref_X``, or ``X`` alone with a detached memory),
   so (``floor_alongside_s``, what its floor target uses).

The memory-bank case (a reference set of ``M`` rows, ``benchlib.MEMORY``) is the workload ``XBM``, not in
the default ``--bench-workloads``: ``pytest bench/bench_ops.py --benchmark-only --bench-workloads XBM
--bench-no-sweeps`` runs it alone, in two variants (gradients to ``X`` and ``ref_X``; to ``X`` only, the memory
detached as in XBM) (5 to 13 minutes on the project's 2-core CPU, most of it the reference).

All outcomes, skips included (with the reason), go to a JSON file next to ``--benchmark-json``
(``<name>.cases.json``) or to ``--bench-cases-json``; ``python bench/report.py`` turns both into
``docs/benchmarks.md`` and the plots.
"""
from __future__ import annotations

import gc
import json
import os
import statistics
import sys
import time

import pytest
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)
try:
    import ee_cuda  # noqa: F401
except ImportError:  # not installed: use the source tree
    sys.path.insert(0, ROOT)

import benchlib as bl  # noqa: E402

_STATE = {"plan": None, "records": {}, "t0": None, "expected": {}, "meter": None, "measured": {}}


def pytest_addoption(parser):
    g = parser.getgroup("ee_cuda benchmarks")
    g.addoption("--bench-budget", type=float, default=640.0,
                help="seconds of estimated reference time the plan may spend (default 640)")
    g.addoption("--bench-hard-limit", type=float, default=700.0,
                help="wall seconds after which optional reference cases are skipped (default 700)")
    g.addoption("--bench-max-call", type=float, default=45.0,
                help="skip reference cases whose single call is predicted slower (s)")
    g.addoption("--bench-max-gib", type=float, default=6.0,
                help="skip reference cases whose memory is predicted larger (GiB); the machine has 24")
    g.addoption("--bench-quick", action="store_true", help="tiny shapes, to smoke-test the harness")
    g.addoption("--bench-workloads", default="W1,W1b,W2",
                help="comma-separated workloads (docs/design.md §12), and XBM: the memory-bank case (a reference "
                     "set of 4096 / 16384 rows; not in the default, its reference cases take minutes)")
    g.addoption("--bench-no-sweeps", action="store_true", help="only the workloads, no n / B sweeps")
    g.addoption("--bench-impls", default="fused,eager,compiled", help="comma-separated implementations")
    g.addoption("--bench-threads", type=int, default=1,
                help="torch threads (default 1: on this shared 2-core machine a second OpenMP thread stalls "
                     "on the busy core and small ops take 10-50x longer; 0 = torch's default)")
    g.addoption("--bench-cases-json", default=None,
                help="where to write every case's outcome (default: next to --benchmark-json)")


def _in_bench_run(config):
    if config.getoption("benchmark_only", False):
        return True
    for arg in config.args:
        path = os.path.abspath(str(arg).split("::")[0])
        if path == HERE or path.startswith(HERE + os.sep):
            return True
    return False


def pytest_collect_file(file_path, parent):
    # A file named on the command line (``pytest bench/bench_ops.py``) is collected by pytest itself, whatever
    # its name: collecting it here too would run every case twice.
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_") and _in_bench_run(parent.config)
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


@pytest.hookimpl(tryfirst=True)  # before pytest-benchmark reads its options
def pytest_configure(config):
    if not _in_bench_run(config):
        return
    # The cyclic garbage collector off while timing, as timeit does: the timed calls allocate Python objects
    # (autograd, dispatch), and a collection pass over pytest's large heap otherwise lands in some of them.
    config.option.benchmark_disable_gc = True
    threads = config.getoption("bench_threads")
    if threads > 0:
        torch.set_num_threads(threads)
    _STATE["load_start"] = os.getloadavg()
    start = bl.machine_info("cpu")   # the tree the run starts from (a commit landing mid-run must not relabel it)
    _STATE["git_start"] = {k: start.get(k) for k in ("git_commit", "git_dirty", "ee_cuda_lib_mtime_utc")}
    workloads = [w for w in config.getoption("bench_workloads").split(",") if w]
    if config.getoption("bench_quick"):
        configs = bl.quick_configs() + (bl.quick_memory_configs() if "XBM" in workloads else [])
    else:
        configs = bl.workload_configs(workloads, "cpu")
        if not config.getoption("bench_no_sweeps"):
            configs += bl.sweep_configs()
    impls = tuple(i for i in config.getoption("bench_impls").split(",") if i)
    _STATE["plan"] = bl.build_plan(
        configs, impls=impls, budget_s=config.getoption("bench_budget"), max_call_s=config.getoption("bench_max_call"),
        max_bytes=int(config.getoption("bench_max_gib") * 2**30), fused_ok=bl.fused_available("cpu"))
    _STATE["order"] = {c.id: i for i, c in enumerate(_STATE["plan"])}


def pytest_sessionstart(session):
    _STATE["t0"] = time.monotonic()
    _STATE["config"] = session.config


def pytest_generate_tests(metafunc):
    if "case" not in metafunc.fixturenames or _STATE["plan"] is None:
        return
    kinds = getattr(metafunc.module, "KINDS", ("op", "loss", "gram"))
    cases = [c for c in _STATE["plan"] if c.kind in kinds]
    metafunc.parametrize("case", cases, ids=[c.id for c in cases])


def pytest_collection_modifyitems(session, config, items):
    """Run in plan order (priority first) so that a late stop only loses the optional cases."""
    order = _STATE.get("order") or {}

    def key(item):
        cs = getattr(item, "callspec", None)
        case = cs.params.get("case") if cs is not None else None
        return order.get(case.id, len(order)) if case is not None else -1
    items.sort(key=key)


def _cases_json_path(config):
    path = config.getoption("bench_cases_json")
    if path:
        return path
    bj = config.getoption("benchmark_json", None)
    name = getattr(bj, "name", bj) if bj is not None and not isinstance(bj, os.PathLike) else bj
    if name:
        root, _ = os.path.splitext(os.fspath(name))
        return root + ".cases.json"
    return os.path.join(ROOT, ".benchmarks", "cases.json")


def pytest_sessionfinish(session, exitstatus):
    if _STATE["plan"] is None:
        return
    _write_cases(session.config)


def _write_cases(config):
    records = []
    for case in _STATE["plan"]:
        rec = case.record()
        rec.update(_STATE["records"].get(case.id, {"status": "not run" if not case.skip else "skipped",
                                                  "reason": case.skip}))
        records.append(rec)
    out = {"machine": bl.machine_info("cpu"), "elapsed_s": round(time.monotonic() - (_STATE["t0"] or 0), 1),
           "options": {k: config.getoption(k) for k in ("bench_budget", "bench_hard_limit", "bench_max_call",
                                                       "bench_max_gib", "bench_quick", "bench_workloads",
                                                       "bench_no_sweeps", "bench_impls", "bench_threads")},
           "cases": records}
    out["machine"]["command"] = bl.portable_paths("pytest " + " ".join(str(a) for a in config.invocation_params.args))
    out["machine"].update(_STATE.get("git_start", {}))
    out["machine"]["loadavg_start"] = [round(x, 2) for x in _STATE.get("load_start", ())]
    out["machine"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    path = _cases_json_path(config)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        json.dump(out, f, indent=1, default=str)


# ------------------------------------------------------------------------------------------------
# The case runner
# ------------------------------------------------------------------------------------------------

def _expected(cfg, target):
    """Fused forward+backward snapshot of a (config, target): the reference every case is checked against."""
    key = (cfg.key(), target)
    if key not in _STATE["expected"]:
        ok, _ = bl.fused_available("cpu")
        if not ok or target == "gram":
            _STATE["expected"][key] = None
        else:
            X, labels, pairs, grad = bl.setup_case(cfg, target)
            fn = bl.build_fn(cfg, target, "fused", labels, pairs)
            step, _ = bl.make_step(cfg, target, "fwdbwd", fn, X, grad)
            _STATE["expected"][key] = bl.snapshot(step())
    return _STATE["expected"][key]


def _record(case, **kw):
    _STATE["records"][case.id] = kw
    elapsed = time.monotonic() - _STATE["t0"]
    med = kw.get("median_s")
    line = f"{elapsed:7.1f}s {case.id:60s} {kw.get('status')} {'' if med is None else f'{med:.4g}s'} {kw.get('reason') or ''}"
    try:
        os.makedirs(os.path.join(ROOT, ".benchmarks"), exist_ok=True)
        with open(os.path.join(ROOT, ".benchmarks", "progress.log"), "a") as f:
            f.write(line + "\n")
        if _STATE.get("config") is not None and time.monotonic() - _STATE.get("last_write", 0) > 30:
            _STATE["last_write"] = time.monotonic()
            _write_cases(_STATE["config"])   # partial results survive an interrupted run
    except OSError:
        pass


def _skip(case, reason):
    _record(case, status="skipped", reason=reason)
    pytest.skip(reason)


def _is_oom(exc):
    msg = str(exc)
    return isinstance(exc, MemoryError) or "can't allocate memory" in msg or "out of memory" in msg.lower()


def run_case(benchmark, case, request):
    config = request.config
    if case.skip:
        _skip(case, case.skip)
    elapsed = time.monotonic() - _STATE["t0"]
    hard = config.getoption("bench_hard_limit")
    if case.priority > bl.REQUIRED_PRIORITY and elapsed + case.est_s > hard:
        _skip(case, f"skipped: session time budget exhausted ({elapsed:.0f} s elapsed, "
                    f"~{case.est_s:.0f} s needed, limit {hard:.0f} s)")
    if _STATE["meter"] is None:
        _STATE["meter"] = bl.RSSMeter()
    meter = _STATE["meter"]
    try:
        _run(benchmark, case, meter)
    except pytest.skip.Exception:
        raise
    except Exception as exc:  # noqa: BLE001
        if _is_oom(exc):
            _skip(case, f"skipped: OOM ({str(exc).splitlines()[0][:120]})")
        _record(case, status="error", reason=f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}")
        raise
    finally:
        if case.impl == "compiled":
            torch._dynamo.reset()


def _run(benchmark, case, meter):
    cfg, target, impl, mode = case.cfg, case.target, case.impl, case.mode
    X, labels, pairs, grad = bl.setup_case(cfg, target)
    if impl == "compiled":
        torch._dynamo.reset()
    fn = bl.build_fn(cfg, target, "eager" if impl == "torch" else impl, labels, pairs)
    step, X_in = bl.make_step(cfg, target, mode, fn, X, grad)
    expected = None if impl == "fused" and mode == "fwdbwd" else _expected(cfg, target)
    est = bl.est_ref_seconds(cfg, target, mode) if impl in ("eager", "compiled") else 0.0
    slow_eager = impl == "eager" and est > bl.SLOW_CALL_S
    info = {"checked": False}

    def check(result):
        if expected is not None:
            info.update(bl.compare(expected, bl.snapshot(result), target, mode))
            info["checked"] = True

    t_first = None
    if not slow_eager:
        t = time.perf_counter()
        res = step()
        t_first = time.perf_counter() - t
        check(res)
        if impl == "fused" and mode == "fwdbwd" and target != "gram":
            _STATE["expected"].setdefault((cfg.key(), target), bl.snapshot(res))
        del res
        t_call = t_first
        if impl == "compiled":
            t_call = _STATE["measured"].get((case.cfg.key(), target, mode, "eager"), est)
        if t_call <= 2.0:
            # The first call can pay one-time costs (compilation, lazy loading of kernels, first-touch page
            # faults) many times the op's own, so the plan uses a second.
            t = time.perf_counter()
            step()
            t_call = time.perf_counter() - t
    else:
        t_call = est
    rounds, iterations = bl.timing_plan(t_call, impl)
    # The fused op timed alongside the reference (just before and just after it), for the speed-up targets:
    # this shared machine's speed drifts by tens of percent over the minutes between the fused case and the
    # reference's, and a ratio of timings taken minutes apart measures the drift as well as the code.
    fused_step = alongside_step(case, X, labels, pairs, grad) if impl in ("eager", "compiled") else None
    alongside = alongside_calls(fused_step) if fused_step is not None else None
    floor_step = floor_alongside_step(case) if impl == "fused" else None
    floor_alongside = alongside_calls(floor_step) if floor_step is not None else None
    peak = {"bytes": None}

    def start_meter():
        # The previous call's dX is released before the meter starts, as zero_grad(set_to_none=True) does
        # before a training step's forward: else whether its release returns pages to the OS (it does when
        # the allocator happens to hold it at the top of the heap) swings the peak by dX's bytes.
        bl.clear_grad(X_in)
        meter.start()

    if iterations > 1 or t_call < 0.5:
        start_meter()
        step()
        peak["bytes"] = meter.stop()
        setup = None
    else:
        def setup():
            b = meter.stop() if meter.base is not None else None
            if b is not None:
                peak["bytes"] = max(peak["bytes"] or 0, b)
            start_meter()
        meter.base = None
    benchmark.group = f"{cfg.label()} {target} {mode}"
    benchmark.name = case.id
    if setup is None:
        result = benchmark.pedantic(step, rounds=rounds, iterations=iterations, warmup_rounds=0)
    else:
        result = benchmark.pedantic(step, setup=setup, rounds=rounds, iterations=1, warmup_rounds=0)
        b = meter.stop()
        if b is not None:
            peak["bytes"] = max(peak["bytes"] or 0, b)
        meter.base = None
    if slow_eager:
        check(result)
    del result
    fused_alongside_s = floor_alongside_s = None
    if alongside is not None:
        fused_alongside_s = statistics.median(alongside + alongside_calls(fused_step))
    if floor_alongside is not None:
        floor_alongside_s = statistics.median(floor_alongside + alongside_calls(floor_step))
    del fused_step, floor_step
    stats = getattr(benchmark, "stats", None)
    median = None
    if stats is not None and getattr(stats, "stats", None) is not None:
        median = stats.stats.median
        _STATE["measured"][(cfg.key(), target, mode, impl)] = median
    budget = bl.fused_budget_bytes(cfg, target, mode)
    record = case.record()
    extra = dict(record, rounds=rounds, iterations=iterations,
                 first_call_s=t_first, peak_bytes=peak["bytes"], budget_bytes=budget,
                 est_ref_s=est, fused_alongside_s=fused_alongside_s, **info)
    if floor_alongside_s is not None:
        extra["floor_alongside_s"] = floor_alongside_s
    benchmark.extra_info.update(extra)
    _record(case, status="ok", median_s=median, **{k: v for k, v in extra.items() if k not in record})


FUSED_ALONGSIDE_CALLS = 5


def alongside_step(case, X, labels, pairs, grad):
    """The fused op's timed callable for a reference case's workload, target and mode (None for the Gram
    floor, or without the fused kernels)."""
    if case.target == "gram" or not bl.fused_available("cpu")[0]:
        return None
    fn = bl.build_fn(case.cfg, case.target, "fused", labels, pairs)
    step, _ = bl.make_step(case.cfg, case.target, case.mode, fn, X, grad)
    return step


def floor_alongside_step(case):
    """The floor's timed callable (the cross-Gram ``X @ ref_X.T`` forward+backward, on its own inputs, with
    ``ref_X`` detached when the case's is) for a fused case of the memory-bank workload, whose floor target
    compares the two side by side; else None."""
    if not case.cfg.memory or case.mode != "fwdbwd":
        return None
    X, labels, pairs, grad = bl.setup_case(case.cfg, "gram")
    fn = bl.build_fn(case.cfg, "gram", "eager", labels, pairs)
    step, X_in = bl.make_step(case.cfg, "gram", "fwdbwd", fn, X, grad)

    def floor():
        step()
        bl.clear_grad(X_in)   # its dX (and dref_X) released, as the case's own between calls
    return floor


def alongside_calls(step):
    """FUSED_ALONGSIDE_CALLS timed calls after a warm-up one, the cyclic collector off (as for every case)."""
    step()
    times = []
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(FUSED_ALONGSIDE_CALLS):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
    finally:
        if was_enabled:
            gc.enable()
    return times


@pytest.fixture
def bench_case(benchmark, request):
    def go(case):
        run_case(benchmark, case, request)
    return go
