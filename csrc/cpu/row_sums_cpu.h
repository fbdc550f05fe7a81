// y += sum_u v[u] * X[col[u]]: one row of dX in the D-space backward, summed in registers a chunk of columns
// at a time (eight vectors), so that each row of X named is read once per chunk and y once.
#pragma once

#include <algorithm>
#include <cstdint>

#include "lanes_cpu.h"

namespace ee {

template <typename acc_t>
EE_LANES_INLINE void add_weighted_rows_impl(const acc_t* x, int64_t D, const int64_t* col, const acc_t* v,
                                           int64_t count, acc_t* y) {
  using V = typename Lanes<acc_t>::V;
  constexpr int W = Lanes<acc_t>::kWidth, kVectors = 8, kChunk = W * kVectors;
  int64_t d0 = 0;
  for (; d0 + kChunk <= D; d0 += kChunk) {
    V acc[kVectors];
    for (int k = 0; k < kVectors; ++k) acc[k] = load_lanes<V>(y + d0 + k * W);
    for (int64_t u = 0; u < count; ++u) {
      const acc_t* xc = x + col[u] * D + d0;
      const acc_t w = v[u];
      for (int k = 0; k < kVectors; ++k) acc[k] += w * load_lanes<V>(xc + k * W);
    }
    for (int k = 0; k < kVectors; ++k) store_lanes(y + d0 + k * W, acc[k]);
  }
  for (; d0 < D; ++d0) {
    acc_t acc = y[d0];
    for (int64_t u = 0; u < count; ++u) acc += v[u] * x[col[u] * D + d0];
    y[d0] = acc;
  }
}

EE_VECTOR_CLONES inline void add_weighted_rows(const float* x, int64_t D, const int64_t* col, const float* v,
                                              int64_t count, float* y) {
  add_weighted_rows_impl(x, D, col, v, count, y);
}
EE_VECTOR_CLONES inline void add_weighted_rows(const double* x, int64_t D, const int64_t* col, const double* v,
                                              int64_t count, double* y) {
  add_weighted_rows_impl(x, D, col, v, count, y);
}

}  // namespace ee
