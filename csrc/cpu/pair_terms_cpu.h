// The terms one pair's rows of dX receive from hard_negative_pairs' outputs in the backward through the
// selected points (search_cpu.cpp), a vector of outputs at a time, with the arithmetic of distance_grad()
// (ee_math.h) operation for operation.
//
// Output (p, q), selected points a of p and b of q, value d, upstream gradient g, seen from p's side:
//   gd = g / (2 d), cross = -2 gd, dot = (|a|^2 + |b|^2 - d^2) / 2,
//   weights (cross alpha_a, cross beta_a) on b's gradient point, own factor gd (dot slope_a + const_a) of a,
// and nothing where d <= 0, d is NaN, g == 0 or the output has no negative (index -1).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "../common/ee_math.h"
#include "lanes_cpu.h"

namespace ee {

// The PointGradCoef of every point, grad_coef_of(o) for o < points, one array per field, so that a vector of
// outputs gathers each field.
template <typename acc_t>
struct PointGradColumns {
  std::vector<acc_t> alpha, beta, sqnorm, slope, cnst;

  template <typename GradCoefOf>
  PointGradColumns(int64_t points, GradCoefOf&& grad_coef_of)
      : alpha(points), beta(points), sqnorm(points), slope(points), cnst(points) {
    for (int64_t o = 0; o < points; ++o) {
      const PointGradCoef<acc_t> c = grad_coef_of(o);
      alpha[o] = c.alpha;
      beta[o] = c.beta;
      sqnorm[o] = c.sqnorm;
      slope[o] = c.own_slope;
      cnst[o] = c.own_const;
    }
  }

  PointGradCoef<acc_t> at(int64_t o) const { return {alpha[o], beta[o], sqnorm[o], slope[o], cnst[o]}; }
};

// Where p's terms go: the chunk's point each multiplies, and its two weights.
template <typename acc_t>
struct TermSlots {
  int32_t* point;
  acc_t *c0, *c1;
};

// The terms of one vector of outputs seen from p's side (point a), given the lanes' gathered fields; `valid`
// masks the lanes with an output to take.
template <typename acc_t>
struct TermLanes {
  using V = typename Lanes<acc_t>::V;
  using K = typename Lanes<acc_t>::K;
  V c0, c1, own;
  K any;  // the lanes with a term

  EE_LANES_INLINE TermLanes(V d, V g, V sqnorm_a, V sqnorm_b, V alpha_a, V beta_a, V slope_a, V const_a, K valid) {
    const V zero = V{} + acc_t(0), one = zero + acc_t(1);
    any = valid & (d > zero) & (g != zero);
    const V gd = any ? g / (acc_t(2) * (any ? d : one)) : zero;
    const V dot = (sqnorm_a + sqnorm_b - d * d) / acc_t(2);
    const V cross = acc_t(-2) * gd;
    c0 = cross * alpha_a;
    c1 = cross * beta_a;
    own = any ? gd * (dot * slope_a + const_a) : zero;
  }
};

// Outputs (p, q) and (q, p) for the chunk's q = q0 + s, s < count: p's row of the index, dist and grad from
// column q0 on, and the chunk's rows at column p (gathered by the caller: `col_*[s]`).
template <typename acc_t>
struct ChunkOutputs {
  const int64_t *row_sel, *col_sel;  // (point of the row's pair, point of the column's pair) per output
  const acc_t *row_d, *row_g, *col_d, *col_g;
  int64_t count;
};

// The terms of p's rows from outputs (p, q) and (q, p) of a chunk, appended to `out` (the chunk's point and
// the two weights); returns their count. Outputs the forward made (dist symmetric, (q, p) selecting (b, a)
// where (p, q) selects (a, b)) give one term per q, with g = g_pq + g_qp: both outputs then have the same d,
// dot, and point of p, and their terms differ only by that factor. Any other (q, p) (a tie resolved the other
// way, or a caller's own index) is taken on its own, exactly as distance_grad() does.
template <typename acc_t>
EE_LANES_INLINE int64_t pair_terms_impl(const PointGradColumns<acc_t>& tab, const ChunkOutputs<acc_t>& in,
                                        int64_t p, int64_t q0, int64_t T, TermSlots<acc_t> out, acc_t* own_p) {
  using L = TermLanes<acc_t>;
  using V = typename L::V;
  using K = typename L::K;
  using key_t = typename Lanes<acc_t>::key_t;
  constexpr int W = Lanes<acc_t>::kWidth;
  const acc_t *alpha = tab.alpha.data() + p * T, *beta = tab.beta.data() + p * T, *sq_p = tab.sqnorm.data() + p * T,
              *slope = tab.slope.data() + p * T, *cnst = tab.cnst.data() + p * T, *sq = tab.sqnorm.data() + q0 * T;
  int64_t count = 0;
  // One output seen from p's side: p's point t, q's point r (q = q0 + s).
  auto single = [&](int64_t t, int64_t r, int64_t s, acc_t d, acc_t g) {
    if ((uint64_t(t) >= uint64_t(T)) | (uint64_t(r) >= uint64_t(T))) return;
    const DistanceGrad<acc_t> gr = distance_grad(tab.at(p * T + t), tab.at((q0 + s) * T + r), d, g);
    if (!gr.any) return;
    out.point[count] = int32_t(s * T + r);
    out.c0[count] = gr.cross * gr.aa;
    out.c1[count] = gr.cross * gr.ba;
    ++count;
    own_p[t] += gr.own_a;
  };
  for (int64_t s0 = 0; s0 < in.count; s0 += W) {
    const int lanes = int(std::min<int64_t>(W, in.count - s0));
    V sa = {}, sb = {}, al = {}, be = {}, sl = {}, cn = {}, d = {}, g = {};
    K merged = {};
    int64_t t[W] = {}, r[W] = {};
    for (int l = 0; l < lanes; ++l) {
      const int64_t s = s0 + l, *pq = in.row_sel + 2 * s, *qp = in.col_sel + 2 * s;
      const bool ok = (uint64_t(pq[0]) < uint64_t(T)) & (uint64_t(pq[1]) < uint64_t(T));
      const bool same = ok & (qp[0] == pq[1]) & (qp[1] == pq[0]) & (in.col_d[s] == in.row_d[s]);
      merged[l] = same ? key_t(-1) : key_t(0);
      t[l] = same ? pq[0] : 0;
      r[l] = same ? pq[1] : 0;
      d[l] = in.row_d[s];
      g[l] = in.row_g[s] + in.col_g[s];
      sa[l] = sq_p[t[l]];
      sb[l] = sq[s * T + r[l]];
      al[l] = alpha[t[l]];
      be[l] = beta[t[l]];
      sl[l] = slope[t[l]];
      cn[l] = cnst[t[l]];
    }
    const L v(d, g, sa, sb, al, be, sl, cn, merged);
    for (int l = 0; l < lanes; ++l) {
      const int64_t s = s0 + l;
      if (!merged[l]) {  // (p, q) and (q, p) on their own
        single(in.row_sel[2 * s], in.row_sel[2 * s + 1], s, in.row_d[s], in.row_g[s]);
        single(in.col_sel[2 * s + 1], in.col_sel[2 * s], s, in.col_d[s], in.col_g[s]);
        continue;
      }
      if (!v.any[l]) continue;
      out.point[count] = int32_t(s * T + r[l]);
      out.c0[count] = v.c0[l];
      out.c1[count] = v.c1[l];
      ++count;
      own_p[t[l]] += v.own[l];
    }
  }
  return count;
}

EE_VECTOR_CLONES inline int64_t pair_terms(const PointGradColumns<float>& tab, const ChunkOutputs<float>& in,
                                           int64_t p, int64_t q0, int64_t T, TermSlots<float> out, float* own_p) {
  return pair_terms_impl(tab, in, p, q0, T, out, own_p);
}
EE_VECTOR_CLONES inline int64_t pair_terms(const PointGradColumns<double>& tab, const ChunkOutputs<double>& in,
                                           int64_t p, int64_t q0, int64_t T, TermSlots<double> out, double* own_p) {
  return pair_terms_impl(tab, in, p, q0, T, out, own_p);
}

}  // namespace ee
