// The (P, T) table of point coefficients on the CPU: ||u|| of every synthetic point is computed in
// D-space (the same arithmetic as the reference, so an exact zero midpoint stays exactly zero), the
// endpoints' squared norms likewise.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <cmath>

#include "../common/ee_math.h"

namespace ee {

template <typename acc_t>
inline PointCoef<acc_t>* coef_ptr(const at::Tensor& table) {
  static_assert(sizeof(PointCoef<acc_t>) == 4 * sizeof(acc_t), "PointCoef must be four packed acc_t");
  return reinterpret_cast<PointCoef<acc_t>*>(table.data_ptr<acc_t>());
}

// ||u||^2 of u = ((n+1-t) x_i + t x_j) / (n+1), with u evaluated element by element as the reference does
// (so that an exact zero midpoint gives exactly 0). The squares are summed in 16 interleaved partial sums,
// which vectorize; the reference's norm has its own summation order, so no order is "the" exact one.
template <typename acc_t>
inline acc_t synthetic_sqnorm(const acc_t* xi, const acc_t* xj, int64_t D, int64_t t, int64_t n) {
  constexpr int kLanes = 16;
  acc_t lane[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      const acc_t u = interpolate(xi[d + k], xj[d + k], t, n);
      lane[k] += u * u;
    }
  acc_t s = 0;
  for (; d < D; ++d) {
    const acc_t u = interpolate(xi[d], xj[d], t, n);
    s += u * u;
  }
  for (int k = 0; k < kLanes; ++k) s += lane[k];
  return s;
}

// X: (B, D) contiguous in acc_t; pairs: (P, 2) contiguous int64 with valid rows. Returns (P, T, 4) acc_t.
template <typename acc_t>
at::Tensor coef_table_cpu(const at::Tensor& X, const at::Tensor& pairs, int64_t n, bool normalize) {
  const int64_t P = pairs.size(0), T = n + 2, D = X.size(1);
  at::Tensor table = at::empty({P, T, 4}, X.options());
  PointCoef<acc_t>* out = coef_ptr<acc_t>(table);
  const acc_t* x = X.data_ptr<acc_t>();
  const int64_t* pr = pairs.data_ptr<int64_t>();
  at::parallel_for(0, P, 8, [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) {
      const acc_t* xi = x + pr[2 * p] * D;
      const acc_t* xj = x + pr[2 * p + 1] * D;
      acc_t si = 0, sj = 0;
      for (int64_t d = 0; d < D; ++d) {
        si += xi[d] * xi[d];
        sj += xj[d] * xj[d];
      }
      out[p * T] = point_coef<acc_t>(0, n, normalize, acc_t(-1), si);
      out[p * T + n + 1] = point_coef<acc_t>(n + 1, n, normalize, acc_t(-1), sj);
      for (int64_t t = 1; t <= n; ++t)
        out[p * T + t] = point_coef<acc_t>(t, n, normalize, std::sqrt(synthetic_sqnorm(xi, xj, D, t, n)), acc_t(0));
    }
  });
  return table;
}

}  // namespace ee
