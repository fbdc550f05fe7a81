#!/usr/bin/env bash
# Fresh-machine setup: a virtual environment in .venv with torch and the test/tool dependencies, then the
# package built in place. The CUDA kernels are compiled when torch sees a GPU or when FORCE_CUDA=1 (no GPU
# needed; fails without a CUDA toolkit); FORCE_ONLY_CPU=1 skips them. A rerun on an unchanged tree and
# configuration compiles nothing.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "setup: $*" >&2; exit 1; }

PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
. .venv/bin/activate
pip install -q "torch>=2.4,<=2.14.1" numpy ninja pybind11 setuptools wheel pytest pytest-benchmark \
    scikit-learn scipy matplotlib tqdm pytorch-metric-learning

. scripts/find_cuda_home.sh

# setup.py decides which kernels to build; the toolkit is looked up only when it may build the CUDA ones.
if [ "${FORCE_ONLY_CPU:-0}" != 1 ]; then
  if [ "${FORCE_CUDA:-0}" = 1 ]; then
    CUDA_HOME=$(find_cuda_home) ||
      die "FORCE_CUDA=1 but no CUDA toolkit found (nvcc and include/cuda_runtime.h): set CUDA_HOME to it"
    python -c "import torch, sys; sys.exit(torch.version.cuda is None)" ||
      die "FORCE_CUDA=1 but torch $(python -c 'import torch; print(torch.__version__)') is not a CUDA build"
    export CUDA_HOME
  elif python -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2>/dev/null; then
    if CUDA_HOME=$(find_cuda_home); then export CUDA_HOME; else unset CUDA_HOME; fi
  fi
fi
config=$(python -B -c "import setup; print(setup.describe(setup.configuration()))")
echo "$config"

# pip builds an editable install from scratch in a temporary folder, so a stamp in .venv records what the
# installed build was made from: the configuration and the build inputs (tracked or new files, or all).
build_inputs() {
  local files=(csrc setup.py pyproject.toml)
  if [ -e .git ] && command -v git >/dev/null; then git ls-files -co --exclude-standard -- "${files[@]}"
  else find "${files[@]}" -type f; fi |
    LC_ALL=C sort | while read -r f; do [ ! -f "$f" ] || sha256sum "$f"; done
}
stamp_file=.venv/ee_cuda-build.sha256
stamp=$( { echo "$config"; build_inputs; } | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp_file" 2>/dev/null)" = "$stamp" ] && python -c "import ee_cuda._C" 2>/dev/null; then
  echo "setup: the installed build matches this tree; nothing to compile"
else
  rm -f "$stamp_file"
  if [[ $config == *"CUDA kernels: yes"* ]]; then
    echo "setup: compiling the CPU and CUDA kernels (about 4 min on 2 cores)"
  else
    echo "setup: compiling the CPU kernels (about 2 min on 2 cores)"
  fi
  # compat: the repository root goes on sys.path, so that a folder named ee_cuda in the working directory
  # (the clone itself, seen from its parent) cannot shadow the package as an empty namespace package
  MAX_JOBS=${MAX_JOBS:-2} pip install -q --no-build-isolation -e . --config-settings editable_mode=compat
  echo "$stamp" > "$stamp_file"
fi
python -c "import ee_cuda, json, sys; info = ee_cuda.build_info()
print('setup: ee_cuda', json.dumps(info)); sys.exit(not info['cpu'])"
