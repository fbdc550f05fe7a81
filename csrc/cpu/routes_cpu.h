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

enum class BackwardRoute : int { kByCost = 0, kPoints = 1, kGram = 2, kScatter = 3 };  // _set_cpu_routes' order

inline bool cpu_has_avx2() {
#if defined(__GNUC__) && defined(__x86_64__)
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

struct CpuRoutes {
  std::atomic<bool> tiles{false};             // every search on the tiles that the CUDA kernels run
  std::atomic<int> backward{0};  // a BackwardRoute: hard_negative_pairs' points or gram route, or the CUDA scatter
  std::atomic<bool> avx2{default_avx2()};
  std::atomic<int64_t> key_limit{std::numeric_limits<int32_t>::max()};  // the row path's largest key

  // The route a backward takes: the forced one, else the points route where `points_cheaper`, else dG.
  BackwardRoute backward_route(bool points_cheaper) const {
    if (backward != 0) return BackwardRoute(backward.load());
    return points_cheaper ? BackwardRoute::kPoints : BackwardRoute::kGram;
  }

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
