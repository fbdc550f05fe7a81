# Sourced by scripts/setup.sh and bench/gpu_check.sh: find_cuda_home prints the CUDA toolkit's root.
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
