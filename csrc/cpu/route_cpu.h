// The CPU kernels' routes, switchable by the tests alone (ee_cuda._C._set_cpu_routes, outside every op's
// schema), so that each route is reached on purpose rather than by the luck of shapes. By default a search
// takes the vectorized row path for finite input and the tile path otherwise, and hard_negative_pairs' backward
// goes through the selected points or through dG, whichever costs fewer multiply-adds.
#pragma once

#include <atomic>

namespace ee {

enum class BackwardRoute : int {
  kByCost = 0,   // the default
  kPoints = 1,   // hard_negative_pairs: through the selected points
  kGram = 2,     // hard_negative_pairs: through a dense dG
  kScatter = 3,  // both searches: the CUDA backward's per-output scatter, run serially
};

struct CpuRoutes {
  std::atomic<bool> tiles{false};  // every search on the tiles that the CUDA kernels run
  std::atomic<int> backward{int(BackwardRoute::kByCost)};
};

inline CpuRoutes& cpu_routes() {
  static CpuRoutes routes;
  return routes;
}

}  // namespace ee
