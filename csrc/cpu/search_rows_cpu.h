// The forward search's row path on the CPU (docs/design.md §3): one task per query pair p scans the candidate
// points (q, r), V pairs q at a time in the lanes of one 32-byte vector, keeping (min, argmin) per lane in
// registers. It computes exactly sq_dist() of ee_math.h (same operations and order, no FMA), bit-identical to
// the tile path, on finite input only (the tile path ranks NaN as torch.min propagates it).
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "../common/ee_math.h"
#include "point_coef_cpu.h"
#include "simd_cpu.h"

namespace ee {

// A side's point coefficients (point_coef_cpu.h) in block layout, shared by every row: block b holds pairs
// q = bV .. bV+V-1, one per lane. Padded lanes (q >= P) read row 0 and have ||a||^2 = +inf, so they never win.
template <typename acc_t>
struct PairBlocks {
  static constexpr int V = Lanes<acc_t>::kWidth;
  int64_t P, T, blocks;
  std::vector<acc_t> alpha, beta, sqnorm;  // [block][r][lane]
  std::vector<int64_t> k, l, label;        // [block * V + lane]: pair q's rows and label
  // Every pair q is (2q, 2q+1), the official sampler's layout: a full block's endpoints are 2V consecutive
  // columns of a Gram row, read with two vector loads instead of 2V scalar ones.
  bool adjacent = true;

  // X: (B, D) contiguous in acc_t; pairs: (P, 2) contiguous with valid rows; labels: (B,) contiguous int64.
  PairBlocks(const at::Tensor& X, const at::Tensor& pairs, const at::Tensor& labels, int64_t n, bool normalize)
      : P(pairs.size(0)), T(n + 2), blocks((P + V - 1) / V), alpha(blocks * T * V), beta(blocks * T * V),
        sqnorm(blocks * T * V, acc_t(INFINITY)), k(blocks * V), l(blocks * V), label(blocks * V) {
    for_each_pair_norms<acc_t>(X, pairs, n, [&](int64_t q, const acc_t* norm) {
      for (int64_t r = 0; r < T; ++r) {
        const PointCoef<acc_t> c = point_coef_of_norm(norm[r], r, n, normalize);
        alpha[cell(q, r)] = c.alpha;
        beta[cell(q, r)] = c.beta;
        sqnorm[cell(q, r)] = c.sqnorm;
      }
    });
    const int64_t *pr = pairs.data_ptr<int64_t>(), *lab = labels.data_ptr<int64_t>();
    for (int64_t q = 0; q < P; ++q) {
      k[q] = pr[2 * q];
      l[q] = pr[2 * q + 1];
      label[q] = lab[pr[2 * q]];  // a positive pair's label: that of either endpoint
      adjacent &= k[q] == 2 * q && l[q] == 2 * q + 1;
    }
  }

  // Whether every endpoint has a finite squared norm: then, by Cauchy-Schwarz, so do the synthetic points and
  // every Gram entry the search reads, the row path's condition.
  bool endpoints_finite() const {
    for (int64_t q = 0; q < P; ++q)
      if (!std::isfinite(sqnorm[cell(q, 0)]) || !std::isfinite(sqnorm[cell(q, T - 1)])) return false;
    return true;
  }

  int64_t cell(int64_t q, int64_t r) const { return ((q / V) * T + r) * V + q % V; }
};

// What row p of `query` reads besides the blocks: the Gram rows of its pair (i, j) (row stride ld), its label
// and its points' coefficients. With `upper_only` the Gram's lower triangle is not filled in: (a, c), c < a,
// is read at (c, a).
template <typename acc_t>
struct RowArgs {
  const acc_t* gram;
  int64_t ld, i, j, label;
  const PointCoef<acc_t>* coef;  // coef[t], t < T: copied out of the query's lanes into the task's buffer
  bool upper_only;

  RowArgs(const PairBlocks<acc_t>& query, int64_t p, const acc_t* gram_, int64_t ld_, bool upper_only_,
          PointCoef<acc_t>* buffer)
      : gram(gram_), ld(ld_), i(query.k[p]), j(query.l[p]), label(query.label[p]), coef(buffer),
        upper_only(upper_only_) {
    for (int64_t t = 0, at = query.cell(p, 0); t < query.T; ++t, at += query.V)
      buffer[t] = PointCoef<acc_t>{query.alpha[at], query.beta[at], query.sqnorm[at], acc_t(0)};
  }
};

// The candidates of block b seen from row p, for r < T, into buf[(3r + 0|1|2) * V + lane]: 2 <a(q,r), x_i>,
// 2 <a(q,r), x_j> (doubled_dot()) and ||a(q,r)||^2, or +inf where q has p's label. kUpperOnly is a
// compile-time choice: the gathers are a good part of a block's work when T is small.
template <bool kUpperOnly, typename acc_t>
EE_LANES_INLINE void fill_block(const PairBlocks<acc_t>& pb, const RowArgs<acc_t>& row, int64_t b, acc_t* buf) {
  using V = typename Lanes<acc_t>::V;
  constexpr int W = Lanes<acc_t>::kWidth;
  V g_ik{}, g_il{}, g_jk{}, g_jl{};
  const acc_t *gi = row.gram + row.i * row.ld, *gj = row.gram + row.j * row.ld;
  auto entry = [&row](const acc_t* g_row, int64_t a, int64_t c) {
    if constexpr (kUpperOnly) return c < a ? row.gram[c * row.ld + a] : g_row[c];
    return g_row[c];
  };
  // The adjacent layout's vector loads need a full block and, on the upper triangle, columns right of i and j.
  if (pb.adjacent && (b + 1) * W <= pb.P && (!kUpperOnly || 2 * b * W > std::max(row.i, row.j))) {
    __builtin_prefetch(gi + 2 * (b + 2) * W);  // a row's blocks come far apart in time
    __builtin_prefetch(gj + 2 * (b + 2) * W);
    deinterleave_lanes(load_lanes<V>(gi + 2 * b * W), load_lanes<V>(gi + 2 * b * W + W), g_ik, g_il);
    deinterleave_lanes(load_lanes<V>(gj + 2 * b * W), load_lanes<V>(gj + 2 * b * W + W), g_jk, g_jl);
  } else {
    for (int e = 0; e < W; ++e) {
      const int64_t k = pb.k[b * W + e], l = pb.l[b * W + e];
      g_ik[e] = entry(gi, row.i, k);
      g_il[e] = entry(gi, row.i, l);
      g_jk[e] = entry(gj, row.j, k);
      g_jl[e] = entry(gj, row.j, l);
    }
  }
  typename Lanes<acc_t>::K same{};
  for (int e = 0; e < W; ++e) same[e] = pb.label[b * W + e] == row.label ? -1 : 0;
  const int64_t off = b * pb.T * W;
  for (int64_t r = 0; r < pb.T; ++r) {
    const V al = load_lanes<V>(&pb.alpha[off + r * W]), be = load_lanes<V>(&pb.beta[off + r * W]);
    store_lanes(buf + (3 * r) * W, doubled_dot(al, be, g_ik, g_il));
    store_lanes(buf + (3 * r + 1) * W, doubled_dot(al, be, g_jk, g_jl));
    store_lanes(buf + (3 * r + 2) * W, same ? (V{} + acc_t(INFINITY)) : load_lanes<V>(&pb.sqnorm[off + r * W]));
  }
}

// sq_dist_unclamped() of point `at` against the V candidates of one (block, r) of buf.
template <typename acc_t, typename V = typename Lanes<acc_t>::V>
EE_LANES_INLINE V lane_d2_unclamped(const acc_t* cand, const PointCoef<acc_t>& at) {
  constexpr int W = Lanes<acc_t>::kWidth;
  return sq_dist_unclamped(at, load_lanes<V>(cand + 2 * W), load_lanes<V>(cand), load_lanes<V>(cand + W));
}

// The same, clamped at 0: exactly sq_dist().
template <typename acc_t, typename V = typename Lanes<acc_t>::V>
EE_LANES_INLINE V lane_d2(const acc_t* cand, const PointCoef<acc_t>& at) {
  const V v = lane_d2_unclamped(cand, at);
  return v > acc_t(0) ? v : V{};
}

// Candidate blocks tabulated per pass over the points t of a row: a bounded buffer, whatever the pairs.
constexpr int64_t kChunkBlocks = 8;

// hard_negative_points, row p: per t and lane, the minimum d2 (sq_dist()) and the key q*T + r of its first
// minimizer (-1: none), into m[t*V + lane] and key[t*V + lane]: keys come in increasing order and only a
// strictly smaller d2 wins, so ties keep the smallest. Two t at a time share the candidate loads as two
// independent dependency chains. `buf` holds kChunkBlocks * 3T * V elements.
template <typename acc_t>
EE_LANES_INLINE void point_row_impl(const PairBlocks<acc_t>& pb, const RowArgs<acc_t>& row, acc_t* buf, acc_t* m,
                                    typename Lanes<acc_t>::key_t* key) {
  using V = typename Lanes<acc_t>::V;
  using K = typename Lanes<acc_t>::K;
  using key_t = typename Lanes<acc_t>::key_t;
  constexpr int W = Lanes<acc_t>::kWidth;
  const int64_t T = pb.T;
  K lane_key;  // lane e holds pair q = b*V + e: key (b*V + e)*T + r = lane_key[e] + b*V*T + r
  for (int e = 0; e < W; ++e) lane_key[e] = key_t(e * T);
  for (int64_t t = 0; t < T; ++t) {
    store_lanes(m + t * W, V{} + acc_t(INFINITY));
    store_lanes(key + t * W, K{} - 1);
  }
  for (int64_t b0 = 0; b0 < pb.blocks; b0 += kChunkBlocks) {
    const int64_t b1 = std::min(pb.blocks, b0 + kChunkBlocks);
    for (int64_t b = b0; b < b1; ++b) fill_block<false>(pb, row, b, buf + (b - b0) * 3 * T * W);
    for (int64_t t = 0; t < T; t += 2) {
      const int64_t t1 = std::min(t + 1, T - 1);  // t1 == t: the odd chain repeats the even one
      V m0 = load_lanes<V>(m + t * W), m1 = load_lanes<V>(m + t1 * W);
      K k0 = load_lanes<K>(key + t * W), k1 = load_lanes<K>(key + t1 * W);
      for (int64_t b = b0; b < b1; ++b)
        for (int64_t r = 0; r < T; ++r) {
          const acc_t* cand = buf + ((b - b0) * T + r) * 3 * W;
          const K kr = lane_key + key_t(b * W * T + r);
          const V v0 = lane_d2(cand, row.coef[t]), v1 = lane_d2(cand, row.coef[t1]);
          const K better0 = v0 < m0, better1 = v1 < m1;
          m0 = better0 ? v0 : m0;
          k0 = better0 ? kr : k0;
          m1 = better1 ? v1 : m1;
          k1 = better1 ? kr : k1;
        }
      store_lanes(m + t1 * W, m1);
      store_lanes(key + t1 * W, k1);
      store_lanes(m + t * W, m0);
      store_lanes(key + t * W, k0);
    }
  }
}
EE_VECTORIZED(point_row)

// A key (t << shift) + r of hard_negative_pairs' (t, r): ordered as t*T + r, split with a shift and a mask.
struct PairKeys {
  int shift = 0;
  explicit PairKeys(int64_t T) { while ((int64_t(1) << shift) < T) ++shift; }
  int64_t bound(int64_t T) const { return T << shift; }
};

// What pair_block() gives per lane (pair q): the minimum d2, output (p, q)'s (t, r) and output (q, p)'s (r, t)
// (the same point pair unless the minimum is tied); -1 where there is no candidate.
template <typename acc_t>
struct BlockResult {
  using key_t = typename Lanes<acc_t>::key_t;
  static constexpr int W = Lanes<acc_t>::kWidth;
  acc_t m[W];
  key_t t[W], r[W], r_q[W], t_p[W];
};

// hard_negative_pairs: row p against the V pairs q of block b, all T x T point pairs, in registers. The hot loop
// skips sq_dist()'s clamp at 0 and keeps the first and the last key (t-major) attaining the running minimum: a
// lane with a unique, positive minimum is final (the clamp changes nothing above 0); the others (ties, minima
// <= 0: every duplicate point makes one) are rescanned in scalar code with sq_dist()'s arithmetic. Even and odd
// t run as two independent chains that share the candidate loads. `buf` holds 3T * V elements.
template <typename acc_t>
EE_LANES_INLINE void pair_block_impl(const PairBlocks<acc_t>& pb, const RowArgs<acc_t>& row, int64_t b, acc_t* buf,
                                     const PairKeys& keys, BlockResult<acc_t>& out) {
  using V = typename Lanes<acc_t>::V;
  using K = typename Lanes<acc_t>::K;
  using key_t = typename Lanes<acc_t>::key_t;
  const int64_t T = pb.T;
  constexpr int W = Lanes<acc_t>::kWidth;
  row.upper_only ? fill_block<true>(pb, row, b, buf) : fill_block<false>(pb, row, b, buf);
  struct Chain {
    V m;
    K first, last;
    EE_LANES_INLINE void visit(const V& v, const K& key) {
      const K lt = v < m, le = v <= m;
      m = lt ? v : m;
      first = lt ? key : first;
      last = le ? key : last;
    }
  };
  Chain even{V{} + acc_t(INFINITY), K{} - 1, K{} - 1}, odd = even;
  for (int64_t t = 0; t < T; t += 2) {
    const bool two = t + 1 < T;
    const K key0 = K{} + key_t(t << keys.shift), key1 = K{} + key_t((t + 1) << keys.shift);
    for (int64_t r = 0; r < T; ++r) {
      const acc_t* cand = buf + 3 * r * W;
      even.visit(lane_d2_unclamped(cand, row.coef[t]), key0 + key_t(r));
      if (two) odd.visit(lane_d2_unclamped(cand, row.coef[t + 1]), key1 + key_t(r));
    }
  }
  // Merge: the smaller minimum wins; equal minima in both chains are a tie.
  const K lt = odd.m < even.m, gt = even.m < odd.m;
  const V m = lt ? odd.m : even.m;
  const K kpq = lt ? odd.first : (gt ? even.first : (odd.first < even.first ? odd.first : even.first));
  const K tied = lt ? (odd.first != odd.last) : (gt ? (even.first != even.last) : (K{} - 1));
  const K none = kpq < 0, rescan = ~none & (tied | (m <= acc_t(0)));
  const K t_pq = none ? kpq : kpq >> keys.shift, r_pq = none ? kpq : kpq & key_t((int64_t(1) << keys.shift) - 1);
  store_lanes(out.m, m);
  store_lanes(out.t, t_pq);
  store_lanes(out.r, r_pq);
  store_lanes(out.r_q, r_pq);
  store_lanes(out.t_p, t_pq);
  for (int e = 0; e < W; ++e) {
    if (!rescan[e]) continue;
    // sq_dist() on this lane: the clamped minimum, its first minimizer in t-major order, then in r-major.
    auto d2 = [&](int64_t t, int64_t r) {
      const acc_t* cand = buf + 3 * r * W + e;
      const acc_t v = sq_dist_unclamped(row.coef[t], cand[2 * W], cand[0], cand[W]);
      return v > acc_t(0) ? v : acc_t(0);
    };
    acc_t best = acc_t(INFINITY);
    for (int64_t t = 0; t < T; ++t)
      for (int64_t r = 0; r < T; ++r) {
        const acc_t v = d2(t, r);
        if (v < best) {
          best = v;
          out.t[e] = key_t(t);
          out.r[e] = key_t(r);
        }
      }
    out.m[e] = best;
    for (int64_t r = 0, found = 0; r < T && !found; ++r)
      for (int64_t t = 0; t < T && !found; ++t)
        if (d2(t, r) == best) {
          out.r_q[e] = key_t(r);
          out.t_p[e] = key_t(t);
          found = 1;
        }
  }
}
EE_VECTORIZED(pair_block)

// Whether the row path's keys fit its lanes' integers (int32 for float; the tests lower the limit, routes_cpu.h):
// q*T + r for points (Q reference pairs), PairKeys for pairs.
template <typename acc_t>
bool row_keys_fit(int64_t Q, int64_t T, bool points) {
  const int64_t bound = points ? (Q + Lanes<acc_t>::kWidth) * T : PairKeys(T).bound(T);
  return bound <= cpu_routes().key_limit;
}

// hard_negative_points: dist[p, t] and its first minimizer c = q*T + r over the reference's pairs q.
template <typename acc_t>
void point_rows_cpu(const PairBlocks<acc_t>& query, const PairBlocks<acc_t>& ref, const acc_t* gram, int64_t ld,
                    acc_t* dist, int64_t* index) {
  using key_t = typename Lanes<acc_t>::key_t;
  constexpr int W = Lanes<acc_t>::kWidth;
  const int64_t T = ref.T;
  at::parallel_for(0, query.P, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(kChunkBlocks * 3 * T * W), state_m(T * W);
    std::vector<key_t> state_k(T * W);
    std::vector<PointCoef<acc_t>> coef(T);
    for (int64_t p = begin; p < end; ++p) {
      point_row(ref, RowArgs<acc_t>(query, p, gram, ld, false, coef.data()), buf.data(), state_m.data(),
                state_k.data());
      for (int64_t t = 0; t < T; ++t) {  // the lanes' (min, smallest key)
        acc_t m = acc_t(INFINITY);
        int64_t c = -1;
        for (int e = 0; e < W; ++e) {
          const acc_t v = state_m[t * W + e];
          const int64_t key = state_k[t * W + e];
          if (key >= 0 && (c < 0 || v < m || (v == m && key < c))) {
            m = v;
            c = key;
          }
        }
        const int64_t o = p * T + t;
        dist[o] = c < 0 ? acc_t(INFINITY) : std::sqrt(m);
        index[2 * o] = c < 0 ? -1 : c / T;
        index[2 * o + 1] = c < 0 ? -1 : c % T;
      }
    }
  });
}

// hard_negative_pairs. Within a batch (`query` and `ref` the same blocks) the task of row p scans the
// unordered pairs (p, q), q >= p, once (lanes q < p of p's block are computed and dropped) and writes both
// (p, q) and (q, p); rows go to tasks in pairs (k, P-1-k), so that each gets as much of the triangle. Against
// a reference set row p scans every reference pair and writes its own row.
template <typename acc_t>
void pair_rows_cpu(const PairBlocks<acc_t>& query, const PairBlocks<acc_t>& ref, const acc_t* gram, int64_t ld,
                   bool upper_only, acc_t* dist, int64_t* index) {
  constexpr int W = Lanes<acc_t>::kWidth;
  const int64_t T = ref.T, P = query.P, Q = ref.P;
  const bool within = &query == &ref;
  const PairKeys keys(T);
  at::parallel_for(0, within ? (P + 1) / 2 : P, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(3 * T * W);
    std::vector<PointCoef<acc_t>> coef(T);
    BlockResult<acc_t> res;
    auto row = [&](int64_t p) {
      const RowArgs<acc_t> ra(query, p, gram, ld, upper_only, coef.data());
      for (int64_t b = within ? p / W : 0; b < ref.blocks; ++b) {
        pair_block(ref, ra, b, buf.data(), keys, res);
        const int64_t q0 = b * W, e0 = within ? std::max<int64_t>(0, p - q0) : 0, e1 = std::min<int64_t>(W, Q - q0);
        for (int64_t e = e0; e < e1; ++e) {
          const acc_t d = res.t[e] >= 0 ? std::sqrt(res.m[e]) : acc_t(INFINITY);
          const int64_t pq = p * Q + q0 + e, qp = (q0 + e) * P + p;
          dist[pq] = d;
          index[2 * pq] = res.t[e];
          index[2 * pq + 1] = res.r[e];
          if (!within) continue;
          dist[qp] = d;
          index[2 * qp] = res.r_q[e];
          index[2 * qp + 1] = res.t_p[e];
        }
      }
    };
    for (int64_t k = begin; k < end; ++k) {
      row(k);
      if (within && P - 1 - k != k) row(P - 1 - k);
    }
  });
}

}  // namespace ee
