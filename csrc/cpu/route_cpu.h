// The CPU searches' route, switchable by the tests alone (ee_cuda._C._force_cpu_tiles, outside the op schema):
// by default finite inputs take the vectorized row path and others the tile path; forced, every search runs
// the tiles that the CUDA kernels run.
#pragma once

#include <atomic>

namespace ee {

inline std::atomic<bool>& cpu_tiles_forced() {
  static std::atomic<bool> forced{false};
  return forced;
}

}  // namespace ee
