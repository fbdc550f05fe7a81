// The point coefficients on the CPU (docs/design.md §2): ||u|| of every synthetic point and the endpoints'
// squared norms are computed in D-space (an exact zero midpoint stays exactly zero, as in the reference), then
// formed into PointCoef, which each route lays out as it reads it (for_each_pair_norms(), point_coef_of_norm()).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "../common/ee_math.h"
#include "simd_cpu.h"

namespace ee {

template <typename acc_t>
inline PointCoef<acc_t>* coef_ptr(const at::Tensor& table) {
  static_assert(sizeof(PointCoef<acc_t>) == 4 * sizeof(acc_t), "PointCoef must be four packed acc_t");
  return reinterpret_cast<PointCoef<acc_t>*>(table.data_ptr<acc_t>());
}

// Sum over d of f(d)^2, in 16 interleaved partial sums, which vectorize (the reference's norm has its own
// summation order, so no order is "the" exact one).
template <typename acc_t, typename F>
EE_LANES_INLINE acc_t sum_of_squares(int64_t D, const F& f) {
  constexpr int kLanes = 16;
  acc_t lane[kLanes] = {};
  int64_t d = 0;
  for (; d + kLanes <= D; d += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      const acc_t u = f(d + k);
      lane[k] += u * u;
    }
  acc_t s = 0;
  for (; d < D; ++d) {
    const acc_t u = f(d);
    s += u * u;
  }
  for (int k = 0; k < kLanes; ++k) s += lane[k];
  return s;
}

// emit(t, ||u_t||^2) for u_t = ((n+1-t) x_i + t x_j) / (n+1), t = 1..n, each element rounded as interpolate()
// rounds it (no FMA), so u_t is exactly 0 where the reference's is (the division, a multiplication by 1/(n+1),
// keeps that and vectorizes). One pass over D serves kPoints points, each summed in the lanes of one vector.
template <typename acc_t, typename Emit>
EE_LANES_INLINE void synthetic_sqnorms(const acc_t* xi, const acc_t* xj, int64_t D, int64_t n, Emit&& emit) {
  using V = typename Lanes<acc_t>::V;
  constexpr int W = Lanes<acc_t>::kWidth, kPoints = 8;
  const acc_t inv = acc_t(1) / acc_t(n + 1);
  for (int64_t t0 = 1; t0 <= n; t0 += kPoints) {
    acc_t a[kPoints], b[kPoints];  // points past n get weights 0: u = 0, nothing added
    for (int c = 0; c < kPoints; ++c) {
      const int64_t t = t0 + c;
      a[c] = t <= n ? acc_t(n + 1 - t) : acc_t(0);
      b[c] = t <= n ? acc_t(t) : acc_t(0);
    }
    V acc[kPoints] = {};
    int64_t d = 0;
    for (; d + W <= D; d += W) {
      const V vi = load_lanes<V>(xi + d), vj = load_lanes<V>(xj + d);
      for (int c = 0; c < kPoints; ++c) {
        const V u = (a[c] * vi + b[c] * vj) * inv;
        acc[c] += u * u;
      }
    }
    for (int c = 0; c < kPoints && t0 + c <= n; ++c) {
      acc_t sum = 0;
      for (int e = 0; e < W; ++e) sum += acc[c][e];
      for (int64_t k = d; k < D; ++k) {
        const acc_t u = (a[c] * xi[k] + b[c] * xj[k]) * inv;
        sum += u * u;
      }
      emit(t0 + c, sum);
    }
  }
}

// norm[t]: ||x_i||^2 and ||x_j||^2 for the originals (t = 0, n+1), ||u_t|| for the synthetic points.
template <typename acc_t>
EE_LANES_INLINE void pair_norms_impl(const acc_t* xi, const acc_t* xj, int64_t D, int64_t n, acc_t* norm) {
  norm[0] = sum_of_squares<acc_t>(D, [&](int64_t d) { return xi[d]; });
  norm[n + 1] = sum_of_squares<acc_t>(D, [&](int64_t d) { return xj[d]; });
  synthetic_sqnorms(xi, xj, D, n, [&](int64_t t, acc_t sq) { norm[t] = std::sqrt(sq); });
}

EE_VECTORIZED(pair_norms)

// Point t's coefficients, and its gradient coefficients, from its pair_norms() entry.
template <typename acc_t>
inline PointCoef<acc_t> point_coef_of_norm(acc_t norm, int64_t t, int64_t n, bool normalize) {
  const bool original = t == 0 || t == n + 1;
  return point_coef<acc_t>(t, n, normalize, original ? acc_t(-1) : norm, original ? norm : acc_t(0));
}
template <typename acc_t>
inline PointGradCoef<acc_t> point_grad_coef_of_norm(acc_t norm, int64_t t, int64_t n, bool normalize) {
  return point_grad_coef(point_coef_of_norm(norm, t, n, normalize), t, n, normalize);
}

// emit(p, norm) with norm[t] the pair_norms() entry of point t of pair p, for every pair, in parallel: what each
// route forms its points' coefficients from and lays out as it reads them (a table, the row path's lanes,
// gradient coefficients), none holding another's copy. X: (B, D) contiguous in acc_t; pairs: (P, 2)
// contiguous with valid rows.
template <typename acc_t, typename Emit>
void for_each_pair_norms(const at::Tensor& X, const at::Tensor& pairs, int64_t n, Emit&& emit) {
  const int64_t D = X.size(1);
  const acc_t* x = X.data_ptr<acc_t>();
  const int64_t* pr = pairs.data_ptr<int64_t>();
  at::parallel_for(0, pairs.size(0), 8, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> norm(n + 2);
    for (int64_t p = begin; p < end; ++p) {
      pair_norms(x + pr[2 * p] * D, x + pr[2 * p + 1] * D, D, n, norm.data());
      emit(p, norm.data());
    }
  });
}

// The (P, T) PointCoef table (coef_ptr()).
template <typename acc_t>
at::Tensor coef_table_cpu(const at::Tensor& X, const at::Tensor& pairs, int64_t n, bool normalize) {
  at::Tensor table = at::empty({pairs.size(0), n + 2, 4}, X.options());
  PointCoef<acc_t>* coef = coef_ptr<acc_t>(table);
  for_each_pair_norms<acc_t>(X, pairs, n, [&](int64_t p, const acc_t* norm) {
    for (int64_t t = 0; t < n + 2; ++t) coef[p * (n + 2) + t] = point_coef_of_norm(norm[t], t, n, normalize);
  });
  return table;
}

}  // namespace ee
