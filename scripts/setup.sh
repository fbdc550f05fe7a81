#!/usr/bin/env bash
# Fresh-machine setup: a virtual environment in .venv with torch and the test/tool dependencies, then the
# package built in place. The CUDA kernels are compiled whenever nvcc is found (no GPU needed); set
# EE_REQUIRE_CUDA=1 to fail when it is not (CI does).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
pip install -q "torch>=2.4,<=2.14.1" numpy ninja pybind11 setuptools wheel pytest pytest-benchmark \
    scikit-learn matplotlib tqdm pytorch-metric-learning

# The nvcc on PATH may be a wrapper outside the toolkit; CUDA_HOME must be the folder whose include/ holds
# cuda_runtime.h, or torch guesses the wrapper's prefix and fails to link.
find_cuda_home() {
  local nvcc_bin candidates=("${CUDA_HOME:-}")
  if nvcc_bin=$(command -v nvcc); then
    local prefix; prefix=$(dirname "$(dirname "$(readlink -f "$nvcc_bin")")")
    candidates+=("$prefix" "$prefix/cuda" "$(dirname "$(dirname "$nvcc_bin")")/cuda")
  fi
  candidates+=(/usr/local/cuda)
  for c in "${candidates[@]}"; do
    if [ -n "$c" ] && [ -f "$c/include/cuda_runtime.h" ] && [ -x "$c/bin/nvcc" ]; then echo "$c"; return 0; fi
  done
  return 1
}

if CUDA_HOME=$(find_cuda_home) && python -c "import torch, sys; sys.exit(torch.version.cuda is None)"; then
  export CUDA_HOME FORCE_CUDA=1
  echo "setup: building with CUDA kernels (CUDA_HOME=$CUDA_HOME)"
elif [ "${EE_REQUIRE_CUDA:-0}" = 1 ]; then
  echo "setup: EE_REQUIRE_CUDA=1 but no CUDA toolkit (nvcc + include/cuda_runtime.h) or no CUDA build of torch" >&2
  exit 1
else
  unset CUDA_HOME
  export FORCE_ONLY_CPU=1
  echo "setup: no CUDA toolkit found, building the CPU kernels only"
fi
MAX_JOBS=${MAX_JOBS:-2} pip install -q --no-build-isolation -e .
python -c "import ee_cuda, json; print('setup: ee_cuda', json.dumps(ee_cuda.build_info()))"
python -c "import ee_cuda, sys; sys.exit(not ee_cuda.build_info()['cpu'])"
