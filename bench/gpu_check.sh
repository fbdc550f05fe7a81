#!/usr/bin/env bash
# End-to-end check of ee_cuda on a CUDA machine, from the repository root, in under 8 minutes:
#
#   bash bench/gpu_check.sh
#   bash bench/gpu_check.sh --dry-run    # anywhere, no GPU: the script's own logic, each stage's command
#                                        # run on the CPU kernels or shown (see dry_run below)
#
# Stages (each with its own time limit; a failing stage is reported and the next one still runs):
#   info      GPU, driver, torch, nvcc
#   build     FORCE_CUDA=1 pip install --no-build-isolation --no-deps -e .  (CUDA_HOME found as setup.sh does)
#   import    ee_cuda.build_info()["cuda"] must be True
#   tests     pytest tests -q -k cuda   (the tests are parametrized over devices)
#   memcheck  compute-sanitizer --tool memcheck  python bench/sanitize_case.py   (if the tool exists)
#   racecheck compute-sanitizer --tool racecheck python bench/sanitize_case.py   (if the tool exists)
#             both instrument only this extension's kernels (names start with ee_cuda_), not torch's
#   bench     python bench/gpu_bench.py: W3's fused cases and floor first, then W1, W1b, W2 and XBM (the
#             memory-bank case, fwd+bwd); fused vs reference eager vs torch.compile, fwd and fwd+bwd, peak
#             memory, kernel launches per op call
# Then a summary of the stages and the benchmark's short table, printed last.
#
# Environment: OUT (results folder; default $TMPDIR/ee_gpu_check), EE_GPU_CHECK_BUDGET (total seconds,
# default 460), PYTHON (default python3, else python), MAX_JOBS (build jobs, default the CPU count), SKIP_BUILD=1 (use the
# installed build), BENCH_ARGS (extra arguments for gpu_bench.py).
# Files written to $OUT: gpu_check.log (all output), gpu_bench.json (results), summary.txt.
set -u
set -o pipefail

cd "$(dirname "$0")/.." || exit 2
DRY_RUN=0
case "${1:-}" in
    --dry-run) DRY_RUN=1 ;;
    "") ;;
    *) echo "usage: bash bench/gpu_check.sh [--dry-run]" >&2; exit 2 ;;
esac
START=$SECONDS
TOTAL=${EE_GPU_CHECK_BUDGET:-460}
OUTDIR=${OUT:-${TMPDIR:-/tmp}/ee_gpu_check}
PY=${PYTHON:-$(command -v python3 || command -v python)}
mkdir -p "$OUTDIR"
LOG="$OUTDIR/gpu_check.log"
: > "$LOG"
export PYTHONUNBUFFERED=1
export MAX_JOBS=${MAX_JOBS:-$(nproc 2>/dev/null || echo 8)}

NAMES=()
RESULTS=()

left() { echo $(( TOTAL - (SECONDS - START) )); }

record() {  # name result
    NAMES+=("$1")
    RESULTS+=("$2")
    echo "=== [$1] $2" | tee -a "$LOG"
}

# stage NAME MAX_SECONDS RESERVE_SECONDS COMMAND...: run with a limit of min(MAX, time left - RESERVE)
stage() {
    local name=$1 max=$2 reserve=$3
    shift 3
    local rem lim t0 rc
    rem=$(left)
    lim=$(( rem - reserve ))
    (( lim > max )) && lim=$max
    if (( lim < 15 )); then
        record "$name" "SKIPPED (time budget spent: ${rem}s left)"
        return 0
    fi
    echo "=== [$name] start (limit ${lim}s): $*" | tee -a "$LOG"
    t0=$SECONDS
    timeout -k 10 "$lim" bash -c '"$@"' "$name" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    if (( rc == 0 )); then
        record "$name" "ok ($(( SECONDS - t0 ))s)"
    elif (( rc == 124 || rc == 137 )); then
        record "$name" "TIMEOUT after ${lim}s"
    else
        record "$name" "FAILED rc=$rc ($(( SECONDS - t0 ))s)"
    fi
    return 0
}

info() {
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1 || echo "nvidia-smi not found"
    command -v nvcc >/dev/null && nvcc --version | tail -2
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'available', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')"
}

# shellcheck source=../scripts/find_cuda_home.sh
. scripts/find_cuda_home.sh

build() {
    if [[ "${SKIP_BUILD:-0}" == 1 ]]; then echo "SKIP_BUILD=1: using the installed build"; return 0; fi
    local home
    home=$(find_cuda_home) || { echo "no CUDA toolkit found (nvcc and include/cuda_runtime.h): set CUDA_HOME"; return 1; }
    echo "CUDA_HOME=$home"
    CUDA_HOME=$home FORCE_CUDA=1 "$PY" -m pip install --no-build-isolation --no-deps -e .
}

import_check() {
    "$PY" -c "import ee_cuda; i = ee_cuda.build_info(); print(i); assert i['cuda'], 'no CUDA kernels in this build'"
}

SANITIZER=""
if command -v compute-sanitizer >/dev/null 2>&1; then
    SANITIZER=$(command -v compute-sanitizer)
elif [[ -x "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" ]]; then
    SANITIZER="${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer"
fi

# Only this extension's kernels are instrumented (torch's and cuBLAS's would take most of the time): every
# kernel of csrc/cuda is named ee_cuda_*, a substring of both its mangled and its demangled name.
# (A string, not an array: the stages run the exported functions in a child bash.)
KERNEL_FILTER=""
if [[ -n "$SANITIZER" ]]; then
    help=$("$SANITIZER" --help 2>&1)
    if [[ $help == *--kernel-name* ]]; then KERNEL_FILTER="--kernel-name kns=ee_cuda_"
    elif [[ $help == *--filter* ]]; then KERNEL_FILTER="--filter kns=ee_cuda_"
    fi
fi

sanitize() {  # tool
    # shellcheck disable=SC2086
    PYTORCH_NO_CUDA_MEMORY_CACHING=1 "$SANITIZER" --tool "$1" $KERNEL_FILTER --error-exitcode 99 \
        --print-limit 20 "$PY" bench/sanitize_case.py
}

# --dry-run: each stage's logic without a GPU. The build is only shown, the tests only collected, the
# sanitizers' case runs on the CPU kernels, and the benchmark runs its quick CPU configuration.
if (( DRY_RUN )); then
    build() { echo "would run: CUDA_HOME=$(find_cuda_home || echo '<not found>') FORCE_CUDA=1 $PY -m pip install" \
        "--no-build-isolation --no-deps -e ."; }
    import_check() { "$PY" -c "import ee_cuda; print(ee_cuda.build_info())"; }
    SANITIZER=${SANITIZER:-compute-sanitizer}
    sanitize() {
        echo "would run: $SANITIZER --tool $1 $KERNEL_FILTER ... $PY bench/sanitize_case.py"
        "$PY" bench/sanitize_case.py --device cpu
    }
fi

export PY SANITIZER KERNEL_FILTER
export -f info build import_check sanitize find_cuda_home

stage info 30 0 info
stage build 300 150 build
stage import 60 140 import_check
if (( DRY_RUN )); then
    stage tests 150 110 "$PY" -m pytest tests -q -k cuda -p no:cacheprovider --collect-only
else
    stage tests 150 110 "$PY" -m pytest tests -q -k cuda -p no:cacheprovider
fi
if [[ -n "$SANITIZER" ]]; then
    stage memcheck 80 90 sanitize memcheck
    stage racecheck 80 80 sanitize racecheck
else
    record memcheck "SKIPPED (compute-sanitizer not found)"
    record racecheck "SKIPPED (compute-sanitizer not found)"
fi
BENCH_BUDGET=$(( $(left) - 40 ))
(( BENCH_BUDGET > 300 )) && BENCH_BUDGET=300
BENCH_DEVICE=(--device cuda)
if (( DRY_RUN )); then BENCH_DEVICE=(--device cpu --quick); BENCH_BUDGET=20; fi
# shellcheck disable=SC2086
stage bench $(( BENCH_BUDGET + 30 )) 5 "$PY" bench/gpu_bench.py "${BENCH_DEVICE[@]}" --losses \
    --budget-s "$BENCH_BUDGET" --json "$OUTDIR/gpu_bench.json" ${BENCH_ARGS:-}

{
    echo
    echo "=== gpu_check summary ($(( SECONDS - START ))s of ${TOTAL}s) ==="
    for i in "${!NAMES[@]}"; do
        printf '  %-10s %s\n' "${NAMES[$i]}" "${RESULTS[$i]}"
    done
    echo
    if [[ -f "$OUTDIR/gpu_bench.json" ]]; then
        "$PY" bench/gpu_bench.py --print "$OUTDIR/gpu_bench.json" 2>&1 || echo "(could not read gpu_bench.json)"
    else
        echo "(no benchmark results)"
    fi
} 2>&1 | tee "$OUTDIR/summary.txt" | tee -a "$LOG"

for r in "${RESULTS[@]}"; do
    case "$r" in ok*|SKIPPED*) ;; *) exit 1 ;; esac
done
exit 0
