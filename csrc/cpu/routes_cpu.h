// The CPU kernels' routes, switchable by the tests alone (ee_cuda._C._set_cpu_routes, outside every schema), so
// that each is reached on purpose. By default a search takes the row path for finite input whose keys fit its
// lanes, else the tiles, and the hot loops run in AVX2 where the CPU has it, unless ATEN_CPU_CAPABILITY=default.
#pragma once

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>

namespace ee {

inline bool cpu_has_avx2() {
#if defined(__GNUC__) && defined(__x86_64__)
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

struct CpuRoutes {
  std::atomic<bool> tiles{false};             // every search on the tiles that the CUDA kernels run
  std::atomic<bool> scatter{false};           // the searches' backward: the CUDA kernels' per-output scatter
  std::atomic<bool> avx2{default_avx2()};
  std::atomic<int64_t> key_limit{std::numeric_limits<int32_t>::max()};  // the row path's largest key

  static bool default_avx2() {
    const char* cap = std::getenv("ATEN_CPU_CAPABILITY");
    return cpu_has_avx2() && !(cap != nullptr && std::strcmp(cap, "default") == 0);
  }
};

inline CpuRoutes& cpu_routes() {
  static CpuRoutes routes;
  return routes;
}

}  // namespace ee
