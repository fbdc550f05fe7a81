// The CPU's fast path of the hard-negative search: one task per pair p scans every candidate point
// c = (q, r) of the other pairs in flat arrays, so that the distance arithmetic runs as plain vectorizable
// loops, then reads off (min, argmin) with the keys of the spec. It computes exactly sq_dist() of ee_math.h
// (same operations, same order) and is used for finite inputs; with NaN in the input the tile path, whose
// total order propagates NaN as torch.min does, runs instead.
#pragma once

#include <ATen/Parallel.h>

#include <cmath>
#include <cstdint>
#include <vector>

#include "../common/search_tiles.h"

namespace ee {

// The hot loops, compiled for AVX2 as well as the baseline and picked at run time (the extension is built
// for the baseline x86-64 ISA). Plain loops over flat arrays with selects and no reduction into one scalar,
// so that they vectorize without -ffast-math; results are bit-identical to the scalar order.
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define EE_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define EE_VECTOR_CLONES
#endif

// d2 of one candidate c from its dot-product halves, as sq_dist() computes it (clamped at 0).
template <typename acc_t>
inline acc_t row_d2(const acc_t* ga, const acc_t* gb, const acc_t* nb, acc_t na, acc_t al, acc_t be, int64_t c) {
  const acc_t v = na + nb[c] - acc_t(2) * (al * ga[c] + be * gb[c]);
  return v > acc_t(0) ? v : acc_t(0);
}

// Minimum of d2 over candidates [0, count), in 16 independent lanes (no store of d2).
template <typename acc_t>
inline acc_t min_d2_impl(const acc_t* __restrict__ ga, const acc_t* __restrict__ gb, const acc_t* __restrict__ nb,
                         acc_t na, acc_t al, acc_t be, int64_t count) {
  constexpr int kLanes = 16;
  acc_t lane[kLanes];
  for (int k = 0; k < kLanes; ++k) lane[k] = acc_t(INFINITY);
  int64_t c = 0;
  for (; c + kLanes <= count; c += kLanes)
    for (int k = 0; k < kLanes; ++k) {
      const acc_t v = row_d2(ga, gb, nb, na, al, be, c + k);
      lane[k] = v < lane[k] ? v : lane[k];
    }
  acc_t m = acc_t(INFINITY);
  for (; c < count; ++c) {
    const acc_t v = row_d2(ga, gb, nb, na, al, be, c);
    m = v < m ? v : m;
  }
  for (int k = 0; k < kLanes; ++k) m = lane[k] < m ? lane[k] : m;
  return m;
}

// best[c] = min(best[c], d2[c]) with best_t[c] = t where d2 is strictly smaller (so the smallest t wins ties).
template <typename acc_t>
inline void keep_smaller_impl(const acc_t* __restrict__ ga, const acc_t* __restrict__ gb, const acc_t* __restrict__ nb,
                              acc_t na, acc_t al, acc_t be, acc_t* __restrict__ best, int32_t* __restrict__ best_t,
                              int32_t t, int64_t count) {
  for (int64_t c = 0; c < count; ++c) {
    const acc_t v = row_d2(ga, gb, nb, na, al, be, c);
    const bool better = v < best[c];
    best[c] = better ? v : best[c];
    best_t[c] = better ? t : best_t[c];
  }
}

EE_VECTOR_CLONES inline float min_d2(const float* ga, const float* gb, const float* nb, float na, float al, float be,
                                     int64_t count) {
  return min_d2_impl(ga, gb, nb, na, al, be, count);
}
EE_VECTOR_CLONES inline double min_d2(const double* ga, const double* gb, const double* nb, double na, double al,
                                      double be, int64_t count) {
  return min_d2_impl(ga, gb, nb, na, al, be, count);
}
EE_VECTOR_CLONES inline void keep_smaller(const float* ga, const float* gb, const float* nb, float na, float al,
                                          float be, float* best, int32_t* best_t, int32_t t, int64_t count) {
  keep_smaller_impl(ga, gb, nb, na, al, be, best, best_t, t, count);
}
EE_VECTOR_CLONES inline void keep_smaller(const double* ga, const double* gb, const double* nb, double na, double al,
                                          double be, double* best, int32_t* best_t, int32_t t, int64_t count) {
  keep_smaller_impl(ga, gb, nb, na, al, be, best, best_t, t, count);
}

// Per candidate c = q*T + r, for a fixed pair p = (i, j): ga = <a(q,r), x_i>, gb = <a(q,r), x_j> from Gram
// entries, and ||a(q,r)||^2, or +inf where q has p's label (so that same-label candidates never win).
template <typename acc_t>
struct CandidateRows {
  std::vector<acc_t> ga, gb, nb;
  explicit CandidateRows(int64_t count) : ga(count), gb(count), nb(count) {}

  // Fills the candidates of pairs q >= first (the others are left as they are).
  void fill(const SearchArgs<acc_t>& a, int64_t p, int64_t first = 0) {
    const int64_t T = a.T, B = a.B, label = a.pair_label[p];
    const acc_t* gi = a.gram + a.pairs[2 * p] * B;
    const acc_t* gj = a.gram + a.pairs[2 * p + 1] * B;
    for (int64_t q = first; q < a.P; ++q) {
      const int64_t k = a.pairs[2 * q], l = a.pairs[2 * q + 1];
      const acc_t g_ik = gi[k], g_il = gi[l], g_jk = gj[k], g_jl = gj[l];
      const bool same = a.pair_label[q] == label;
      for (int64_t r = 0; r < T; ++r) {
        const PointCoef<acc_t> b = a.coef[q * T + r];
        ga[q * T + r] = b.alpha * g_ik + b.beta * g_il;
        gb[q * T + r] = b.alpha * g_jk + b.beta * g_jl;
        nb[q * T + r] = same ? acc_t(INFINITY) : b.sqnorm;
      }
    }
  }

};

// Candidates are visited in chunks small enough to stay in L1 while every t of the row is scanned.
constexpr int64_t kChunkPairs = 64;

// hard_negative_points, row p: dist[p, t] and its first minimizer c = q*T + r.
template <typename acc_t, typename scalar_t>
void point_rows_cpu(const SearchArgs<acc_t>& a, scalar_t* dist, int64_t* index) {
  const int64_t T = a.T, count = a.P * T, chunk = kChunkPairs * T;
  at::parallel_for(0, a.P, 1, [&](int64_t begin, int64_t end) {
    CandidateRows<acc_t> rows(count);
    std::vector<acc_t> best(T);
    std::vector<int64_t> best_c(T);
    for (int64_t p = begin; p < end; ++p) {
      rows.fill(a, p);
      std::fill(best.begin(), best.end(), acc_t(INFINITY));
      std::fill(best_c.begin(), best_c.end(), int64_t(-1));
      for (int64_t c0 = 0; c0 < count; c0 += chunk) {
        const int64_t len = std::min(chunk, count - c0);
        const acc_t *ga = rows.ga.data() + c0, *gb = rows.gb.data() + c0, *nb = rows.nb.data() + c0;
        for (int64_t t = 0; t < T; ++t) {
          const PointCoef<acc_t> at = a.coef[p * T + t];
          const acc_t m = min_d2(ga, gb, nb, at.sqnorm, at.alpha, at.beta, len);
          if (!(m < best[t])) continue;  // strict: an earlier chunk keeps its tie
          int64_t c = 0;  // the first minimizer: the same arithmetic gives the same bits
          while (c < len && row_d2(ga, gb, nb, at.sqnorm, at.alpha, at.beta, c) != m) ++c;
          if (c == len) continue;
          best[t] = m;
          best_c[t] = c0 + c;
        }
      }
      for (int64_t t = 0; t < T; ++t) {
        const int64_t o = p * T + t, c = best_c[t];
        dist[o] = scalar_t(c < 0 ? acc_t(INFINITY) : std::sqrt(best[t]));
        index[2 * o] = c < 0 ? -1 : c / T;
        index[2 * o + 1] = c < 0 ? -1 : c % T;
      }
    }
  });
}

// hard_negative_pairs. The task of row p scans the unordered pairs (p, q), q >= p, once and writes both
// outputs: per candidate (q, r) it keeps the minimum over t with the smallest such t, from which
// (p, q) takes the smallest t*T + r and (q, p), in its own terms, the smallest r*T + t among ties (the
// tile path's two argmins). Rows go to tasks in pairs (k, P-1-k), so that each gets as much of the triangle.
template <typename acc_t, typename scalar_t>
void pair_rows_cpu(const SearchArgs<acc_t>& a, scalar_t* dist, int64_t* index) {
  const int64_t T = a.T, P = a.P;
  at::parallel_for(0, (P + 1) / 2, 1, [&](int64_t begin, int64_t end) {
    CandidateRows<acc_t> rows(P * T);
    std::vector<acc_t> best(kChunkPairs * T);
    std::vector<int32_t> best_t(kChunkPairs * T);
    auto row = [&](int64_t p) {
      rows.fill(a, p, p);
      for (int64_t q0 = p; q0 < P; q0 += kChunkPairs) {
        const int64_t nq = std::min(kChunkPairs, P - q0), len = nq * T, c0 = q0 * T;
        std::fill(best.begin(), best.begin() + len, acc_t(INFINITY));
        std::fill(best_t.begin(), best_t.begin() + len, 0);
        for (int64_t t = 0; t < T; ++t) {  // per candidate, the smallest d2 over t (strict <: smallest t wins)
          const PointCoef<acc_t> at = a.coef[p * T + t];
          keep_smaller(rows.ga.data() + c0, rows.gb.data() + c0, rows.nb.data() + c0, at.sqnorm, at.alpha, at.beta,
                       best.data(), best_t.data(), int32_t(t), len);
        }
        for (int64_t e = 0; e < nq; ++e) {
          acc_t m = acc_t(INFINITY);
          int64_t key = INT64_MAX, r_first = -1;
          for (int64_t r = 0; r < T; ++r) {
            const int64_t c = e * T + r, k = int64_t(best_t[c]) * T + r;
            if (best[c] < m || (best[c] == m && k < key)) {
              m = best[c];
              key = k;
            }
          }
          for (int64_t r = 0; r < T && r_first < 0; ++r)  // (q, p): the smallest r attaining m
            if (best[e * T + r] == m) r_first = r;
          const int64_t q = q0 + e, pq = p * P + q, qp = q * P + p;
          const bool found = m < acc_t(INFINITY);
          const scalar_t d = scalar_t(found ? std::sqrt(m) : acc_t(INFINITY));
          dist[pq] = d;
          dist[qp] = d;
          index[2 * pq] = found ? key / T : -1;
          index[2 * pq + 1] = found ? key % T : -1;
          index[2 * qp] = found ? r_first : -1;
          index[2 * qp + 1] = found ? int64_t(best_t[e * T + r_first]) : -1;
        }
      }
    };
    for (int64_t k = begin; k < end; ++k) {
      row(k);
      if (P - 1 - k != k) row(P - 1 - k);
    }
  });
}

}  // namespace ee
