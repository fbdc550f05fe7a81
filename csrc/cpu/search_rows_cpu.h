// The CPU's fast path of the hard-negative search: one task per pair p scans the candidate points (q, r) of
// the other pairs, V pairs q at a time in the lanes of one vector (V = 32 bytes / sizeof(acc_t)), keeping
// (min, argmin) per lane in registers, then reduces the lanes with the tie order of docs/design.md §3. It computes
// exactly sq_dist() of ee_math.h (same operations, same order, no FMA) and is used for finite inputs; with
// NaN in the input the tile path, whose total order propagates NaN as torch.min does, runs instead.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <vector>

#include "../common/ee_math.h"
#include "coef_table_cpu.h"
#include "lanes_cpu.h"

namespace ee {

// The pairs in block layout, built once per call (straight from X: the row path needs no (P, T) coefficient
// table) and shared by every row: block b holds pairs q = b*V .. b*V+V-1, one per lane. Padded lanes
// (q >= P) read row 0 and have ||a||^2 = +inf, so that they never win. Two allocations in all: the
// coefficient lanes and the endpoint/label lanes.
template <typename acc_t>
struct PairBlocks {
  static constexpr int V = Lanes<acc_t>::kWidth;
  int64_t P, T, blocks;
  std::vector<acc_t> coefs;     // alpha, then beta, then sqnorm: each [block][r][lane]
  std::vector<int64_t> ends;    // k, then l, then label: each [block * V + lane], of pair q
  const acc_t *alpha, *beta, *sqnorm;
  const int64_t *k, *l, *label;
  // Every pair q is (2q, 2q+1), the official sampler's layout: a full block's endpoints are 2V consecutive
  // columns of a Gram row, read with two vector loads instead of 2V scalar ones.
  bool adjacent;

  // X: (B, D) contiguous in acc_t; pairs: (P, 2) contiguous with valid rows; labels: (B,) contiguous int64.
  PairBlocks(const at::Tensor& X, const at::Tensor& pairs, const at::Tensor& labels, int64_t n, bool normalize)
      : P(pairs.size(0)), T(n + 2), blocks((P + V - 1) / V), coefs(3 * blocks * T * V, acc_t(0)),
        ends(3 * blocks * V, 0), adjacent(true) {
    const int64_t cells = blocks * T * V, lanes = blocks * V;
    std::fill(coefs.begin() + 2 * cells, coefs.end(), acc_t(INFINITY));
    alpha = coefs.data();
    beta = alpha + cells;
    sqnorm = beta + cells;
    k = ends.data();
    l = k + lanes;
    label = l + lanes;
    const int64_t *pr = pairs.data_ptr<int64_t>(), *lab = labels.data_ptr<int64_t>();
    acc_t* c = coefs.data();
    int64_t* e = ends.data();
    for_each_pair_norms<acc_t>(X, pairs, n, [&](int64_t q, const acc_t* norm) {
      for (int64_t r = 0; r < T; ++r) {
        const PointCoef<acc_t> pc = point_coef_of_norm(norm[r], r, n, normalize);
        const int64_t at = cell(q, r);
        c[at] = pc.alpha;
        c[cells + at] = pc.beta;
        c[2 * cells + at] = pc.sqnorm;
      }
      e[q] = pr[2 * q];
      e[lanes + q] = pr[2 * q + 1];
      e[2 * lanes + q] = lab[pr[2 * q]];  // a positive pair's label: that of either endpoint
    });
    for (int64_t q = 0; q < P; ++q) adjacent &= pr[2 * q] == 2 * q && pr[2 * q + 1] == 2 * q + 1;
  }
  PairBlocks(const PairBlocks&) = delete;  // alpha .. label point into its own arrays
  PairBlocks& operator=(const PairBlocks&) = delete;

  // Where point r of pair q sits in each coefficient array: block q / V, row r, lane q % V.
  int64_t cell(int64_t q, int64_t r) const { return ((q / V) * T + r) * V + q % V; }

  // Whether every endpoint has a finite squared norm: then, by Cauchy-Schwarz, so do the synthetic points and
  // every Gram entry the search reads, the row path's condition.
  bool endpoints_finite() const {
    for (int64_t q = 0; q < P; ++q)
      if (!std::isfinite(sqnorm[cell(q, 0)]) || !std::isfinite(sqnorm[cell(q, T - 1)])) return false;
    return true;
  }

  // Point r of pair q, as the search reads it (alpha, beta, sqnorm; not unorm, which it does not use).
  PointCoef<acc_t> point(int64_t q, int64_t r) const {
    const int64_t at = cell(q, r);
    return PointCoef<acc_t>{alpha[at], beta[at], sqnorm[at], acc_t(0)};
  }
};

// What row p reads besides the blocks: the Gram rows of its pair (i, j), its label and its points'
// coefficients. With `upper_only` the Gram's lower triangle is not filled in: entry (a, c) with c < a is read
// at (c, a).
template <typename acc_t>
struct RowArgs {
  const acc_t* gram;
  int64_t ld, i, j;  // p's pair (i, j): Gram rows gram + i*ld, gram + j*ld
  int64_t label;
  const PointCoef<acc_t>* coef;  // coef[t], t < T
  bool upper_only;
};

// Row p's RowArgs, its coefficients copied out of the query pairs' blocks into `coef` (T entries, the
// task's). `ld`: the Gram's row stride (the reference's rows).
template <typename acc_t>
RowArgs<acc_t> row_args(const PairBlocks<acc_t>& pb, const acc_t* gram, int64_t ld, int64_t p, bool upper_only,
                        PointCoef<acc_t>* coef) {
  for (int64_t t = 0; t < pb.T; ++t) coef[t] = pb.point(p, t);
  return RowArgs<acc_t>{gram, ld, pb.k[p], pb.l[p], pb.label[p], coef, upper_only};
}

// The candidates of block b seen from row p, for r < T, into buf[(3r + 0|1|2) * V + lane]: 2 <a(q,r), x_i>
// and 2 <a(q,r), x_j> (doubled_dot() of the Gram entries) and nb = ||a(q,r)||^2, or +inf where q has p's
// label. kUpperOnly: the Gram's lower triangle is not filled in (RowArgs::upper_only), a compile-time choice
// because the gathers are a good part of a block's work when T is small.
template <bool kUpperOnly, typename acc_t>
EE_LANES_INLINE void fill_block(const PairBlocks<acc_t>& pb, const RowArgs<acc_t>& row, int64_t b, acc_t* buf) {
  using L = Lanes<acc_t>;
  using V = typename L::V;
  using K = typename L::K;
  constexpr int W = L::kWidth;
  V g_ik{}, g_il{}, g_jk{}, g_jl{};
  K same{};
  const acc_t *gi = row.gram + row.i * row.ld, *gj = row.gram + row.j * row.ld;
  auto entry = [&row](const acc_t* g_row, int64_t a, int64_t c) {
    if constexpr (kUpperOnly) return c < a ? row.gram[c * row.ld + a] : g_row[c];
    return g_row[c];
  };
  // The adjacent layout's fast read needs a full block and, reading the upper triangle, columns 2bW.. right
  // of both rows i and j.
  const bool contiguous = pb.adjacent && (b + 1) * W <= pb.P && (!kUpperOnly || 2 * b * W > std::max(row.i, row.j));
  if (contiguous) {
    // A row's blocks come one after another, far apart in time: prefetch the Gram entries of a later one.
    constexpr int64_t kPrefetchBlocks = 2;
    __builtin_prefetch(gi + 2 * (b + kPrefetchBlocks) * W);
    __builtin_prefetch(gj + 2 * (b + kPrefetchBlocks) * W);
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
  for (int e = 0; e < W; ++e) same[e] = pb.label[b * W + e] == row.label ? -1 : 0;
  const int64_t off = b * pb.T * W;
  for (int64_t r = 0; r < pb.T; ++r) {
    const V al = load_lanes<V>(pb.alpha + off + r * W), be = load_lanes<V>(pb.beta + off + r * W);
    const V nb = load_lanes<V>(pb.sqnorm + off + r * W);
    store_lanes(buf + (3 * r) * W, doubled_dot(al, be, g_ik, g_il));
    store_lanes(buf + (3 * r + 1) * W, doubled_dot(al, be, g_jk, g_jl));
    store_lanes(buf + (3 * r + 2) * W, same ? (V{} + acc_t(INFINITY)) : nb);
  }
}

// ||a(p, t)||^2 + ||a(q, r)||^2 - 2 <a(p, t), a(q, r)> against the V candidates of one (block, r) of buf:
// sq_dist_unclamped()'s operations in its order (sq_dist() before its clamp at 0).
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

// A pair key k = t*T + r split into (t, r) without an integer division: a double reciprocal gives t up to
// one unit, which one correction fixes (keys are far below 2^52).
struct KeySplit {
  int64_t T;
  double inv_T;
  explicit KeySplit(int64_t T_) : T(T_), inv_T(1.0 / double(T_)) {}
  EE_LANES_INLINE void split(int64_t k, int64_t& t, int64_t& r) const {
    t = int64_t(double(k) * inv_T);
    r = k - t * T;
    if (r < 0) {
      --t;
      r += T;
    } else if (r >= T) {
      ++t;
      r -= T;
    }
  }
  // split() on every lane of a key vector, -1 (no candidate) giving (-1, -1). The int32 keys of float lanes
  // go through a float reciprocal, exact enough for the one correction while keys stay below 2^24.
  template <typename K>
  EE_LANES_INLINE void split_lanes(const K& k, K& t, K& r) const {
    using key_t = std::remove_cv_t<std::remove_reference_t<decltype(k[0])>>;
    constexpr int W = sizeof(K) / sizeof(key_t);
    if constexpr (sizeof(key_t) == 4) {
      if (T * T <= (int64_t(1) << 24)) {
        typedef float F __attribute__((vector_size(sizeof(K))));
        const key_t T32 = key_t(T);
        t = __builtin_convertvector(__builtin_convertvector(k, F) * float(inv_T), K);
        r = k - t * T32;
        const K low = r < 0, high = r >= T32;  // masks: -1 where set
        t = t + low - high;
        r = r + (low & T32) - (high & T32);
        const K none = k < 0;
        t = none ? K{} - 1 : t;
        r = none ? K{} - 1 : r;
        return;
      }
    }
    for (int e = 0; e < W; ++e) {
      int64_t te = -1, re = -1;
      if (k[e] >= 0) split(k[e], te, re);
      t[e] = key_t(te);
      r[e] = key_t(re);
    }
  }
};

// Candidate blocks per pass over the points t of a row: few enough that their candidates stay in L1.
constexpr int64_t kChunkBlocks = 8;

// hard_negative_points, row p: per t and lane, the minimum d2 and the key q*T + r of its first minimizer,
// into m[t*V + lane], key[t*V + lane] (key -1: no candidate). Within a lane, blocks and r come in increasing
// key order and only a strictly smaller d2 replaces the state, so each lane keeps its smallest key among
// ties. Two t at a time share the candidate loads and give two independent dependency chains. `buf` holds
// kChunkBlocks * 3T * V elements.
template <typename acc_t>
EE_LANES_INLINE void point_row_impl(const PairBlocks<acc_t>& pb, const RowArgs<acc_t>& row, acc_t* buf, acc_t* state_m,
                           typename Lanes<acc_t>::key_t* state_k) {
  using L = Lanes<acc_t>;
  using V = typename L::V;
  using K = typename L::K;
  using key_t = typename L::key_t;
  constexpr int W = L::kWidth;
  const int64_t T = pb.T;
  K lane_key;  // lane e holds pair q = b*V + e: key (b*V + e)*T + r = lane_key[e] + b*V*T + r
  for (int e = 0; e < W; ++e) lane_key[e] = key_t(e * T);
  for (int64_t t = 0; t < T; ++t) {
    store_lanes(state_m + t * W, V{} + acc_t(INFINITY));
    store_lanes(state_k + t * W, K{} - 1);
  }
  for (int64_t b0 = 0; b0 < pb.blocks; b0 += kChunkBlocks) {
    const int64_t b1 = std::min(pb.blocks, b0 + kChunkBlocks);
    for (int64_t b = b0; b < b1; ++b) fill_block<false>(pb, row, b, buf + (b - b0) * 3 * T * W);
    for (int64_t t = 0; t < T; t += 2) {
      const bool two = t + 1 < T;
      const PointCoef<acc_t> a0 = row.coef[t], a1 = row.coef[two ? t + 1 : t];
      V m0 = load_lanes<V>(state_m + t * W), m1 = two ? load_lanes<V>(state_m + (t + 1) * W) : m0;
      K k0 = load_lanes<K>(state_k + t * W), k1 = two ? load_lanes<K>(state_k + (t + 1) * W) : k0;
      for (int64_t b = b0; b < b1; ++b) {
        const acc_t* cand = buf + (b - b0) * 3 * T * W;
        for (int64_t r = 0; r < T; ++r) {
          const K key = lane_key + key_t(b * W * T + r);
          const V v0 = lane_d2(cand + 3 * r * W, a0), v1 = lane_d2(cand + 3 * r * W, a1);
          const K better0 = v0 < m0, better1 = v1 < m1;
          m0 = better0 ? v0 : m0;
          k0 = better0 ? key : k0;
          m1 = better1 ? v1 : m1;
          k1 = better1 ? key : k1;
        }
      }
      store_lanes(state_m + t * W, m0);
      store_lanes(state_k + t * W, k0);
      if (two) {
        store_lanes(state_m + (t + 1) * W, m1);
        store_lanes(state_k + (t + 1) * W, k1);
      }
    }
  }
}

// What pair_block() gives per lane (pair q): the minimum d2, the output (p, q)'s (t, r) and the output
// (q, p)'s (r, t) in its own terms (the same point pair unless the minimum is tied); -1 where there is no
// candidate.
template <typename acc_t>
struct BlockResult {
  using key_t = typename Lanes<acc_t>::key_t;
  static constexpr int W = Lanes<acc_t>::kWidth;
  acc_t m[W];
  key_t t[W], r[W], r_q[W], t_p[W];
};

// hard_negative_pairs: row p against the V pairs q of block b, all T x T point pairs, in registers, into out
// (BlockResult): the minimum d2, its smallest key t*T + r (t-major visit, strict <) split into (t, r), and
// for the output (q, p) its smallest key r*T + t in its own terms, split into (r, t). The hot loop skips
// sq_dist()'s clamp at 0 and keeps, besides the first key attaining the running minimum, the last one:
// where they differ at the end the minimum was attained more than once. A lane with a unique, positive
// minimum has its result (clamping changes nothing above 0, and the unique minimizer gives both keys); the
// others (ties, and minima <= 0, which the clamp turns into ties at 0: rare, but every duplicate point makes
// one) are rescanned in scalar code with sq_dist()'s arithmetic. Even and odd t run as two independent chains that
// share the candidate loads (one chain is bound by its compare-blend latency). `buf` holds 3T * V elements.
template <typename acc_t>
EE_LANES_INLINE void pair_block_impl(const PairBlocks<acc_t>& pb, const RowArgs<acc_t>& row, int64_t b, acc_t* buf,
                                     const KeySplit& keys, BlockResult<acc_t>& out) {
  using L = Lanes<acc_t>;
  using V = typename L::V;
  using K = typename L::K;
  using key_t = typename L::key_t;
  const int64_t T = pb.T;
  constexpr int W = L::kWidth;
  row.upper_only ? fill_block<true>(pb, row, b, buf) : fill_block<false>(pb, row, b, buf);
  struct Chain {
    V m;
    K first, last;  // the first and the last key (in visit order) attaining the running minimum
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
    const PointCoef<acc_t> a0 = row.coef[t], a1 = row.coef[two ? t + 1 : t];
    K key0 = K{} + key_t(t * T), key1 = key0 + key_t(T);
    for (int64_t r = 0; r < T; ++r) {
      const acc_t* cand = buf + 3 * r * W;
      even.visit(lane_d2_unclamped(cand, a0), key0);
      if (two) odd.visit(lane_d2_unclamped(cand, a1), key1);
      key0 += 1;
      key1 += 1;
    }
  }
  // Merge: the smaller minimum wins; equal minima in both chains are a tie.
  const K lt = odd.m < even.m, gt = even.m < odd.m;
  const V m = lt ? odd.m : even.m;
  const K kpq = lt ? odd.first : (gt ? even.first : (odd.first < even.first ? odd.first : even.first));
  const K tied = lt ? (odd.first != odd.last) : (gt ? (even.first != even.last) : (K{} - 1));
  const K rescan = (kpq >= 0) & (tied | (m <= acc_t(0)));
  K t_pq, r_pq;
  keys.split_lanes(kpq, t_pq, r_pq);
  store_lanes(out.m, m);
  store_lanes(out.t, t_pq);
  store_lanes(out.r, r_pq);
  store_lanes(out.r_q, r_pq);
  store_lanes(out.t_p, t_pq);
  key_t rescan_lanes[W];
  store_lanes(rescan_lanes, rescan);
  for (int e = 0; e < W; ++e) {
    if (!rescan_lanes[e]) continue;
    // sq_dist() on this lane: the clamped minimum, its first minimizer in t-major order, then in r-major.
    auto d2 = [&](int64_t t, int64_t r) {
      const PointCoef<acc_t> at = row.coef[t];
      const acc_t* cand = buf + 3 * r * W + e;
      const acc_t v = sq_dist_unclamped(at, cand[2 * W], cand[0], cand[W]);
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
      for (int64_t t = 0; t < T; ++t)
        if (d2(t, r) == best) {
          out.r_q[e] = key_t(r);
          out.t_p[e] = key_t(t);
          found = 1;
          break;
        }
  }
}

EE_VECTOR_CLONES inline void point_row(const PairBlocks<float>& pb, const RowArgs<float>& row, float* buf, float* m,
                                       int32_t* k) {
  point_row_impl(pb, row, buf, m, k);
}
EE_VECTOR_CLONES inline void point_row(const PairBlocks<double>& pb, const RowArgs<double>& row, double* buf,
                                       double* m, int64_t* k) {
  point_row_impl(pb, row, buf, m, k);
}
EE_VECTOR_CLONES inline void pair_block(const PairBlocks<float>& pb, const RowArgs<float>& row, int64_t b, float* buf,
                                        const KeySplit& keys, BlockResult<float>& out) {
  pair_block_impl(pb, row, b, buf, keys, out);
}
EE_VECTOR_CLONES inline void pair_block(const PairBlocks<double>& pb, const RowArgs<double>& row, int64_t b,
                                        double* buf, const KeySplit& keys, BlockResult<double>& out) {
  pair_block_impl(pb, row, b, buf, keys, out);
}

// Whether the row path's keys fit its lanes' integers (int32 for float): q*T + r for points (Q reference
// pairs), T*T for pairs.
template <typename acc_t>
bool row_keys_fit(int64_t Q, int64_t T, bool points) {
  const int64_t bound = points ? (Q + Lanes<acc_t>::kWidth) * T : T * T;
  return bound < int64_t(std::numeric_limits<typename Lanes<acc_t>::key_t>::max());
}

// hard_negative_points: dist[p, t] and its first minimizer c = q*T + r over the reference's pairs q, one task
// per query row p. gram: (rows of the queries' X, ld), ld the rows of the reference's.
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
      point_row(ref, row_args(query, gram, ld, p, false, coef.data()), buf.data(), state_m.data(), state_k.data());
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
        dist[o] = acc_t(c < 0 ? acc_t(INFINITY) : std::sqrt(m));
        index[2 * o] = c < 0 ? -1 : c / T;
        index[2 * o + 1] = c < 0 ? -1 : c % T;
      }
    }
  });
}

// hard_negative_pairs. Within a batch (`query` and `ref` the same blocks) the task of row p scans the
// unordered pairs (p, q), q >= p, once (from p's block on; lanes q < p are computed and dropped) and writes both
// outputs (p, q) and (q, p); rows go to tasks in pairs (k, P-1-k), so that each gets as much of the triangle.
// Against a reference set row p scans every reference pair and writes its own row. `upper_only`: see RowArgs.
template <typename acc_t>
void pair_rows_cpu(const PairBlocks<acc_t>& query, const PairBlocks<acc_t>& ref, const acc_t* gram, int64_t ld,
                   bool upper_only, acc_t* dist, int64_t* index) {
  constexpr int W = Lanes<acc_t>::kWidth;
  const int64_t T = ref.T, P = query.P, Q = ref.P;
  const bool within = &query == &ref;
  const KeySplit keys(T);
  at::parallel_for(0, within ? (P + 1) / 2 : P, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> buf(3 * T * W);
    std::vector<PointCoef<acc_t>> coef(T);
    BlockResult<acc_t> res;
    acc_t d[W];
    auto row = [&](int64_t p) {
      const RowArgs<acc_t> ra = row_args(query, gram, ld, p, upper_only, coef.data());
      for (int64_t b = within ? p / W : 0; b < ref.blocks; ++b) {
        pair_block(ref, ra, b, buf.data(), keys, res);
        const int64_t q0 = b * W, e0 = within ? std::max<int64_t>(0, p - q0) : 0, e1 = std::min<int64_t>(W, Q - q0);
        // Row p (contiguous; the compiler vectorizes it), then within a batch column p.
        for (int e = 0; e < W; ++e) d[e] = acc_t(res.t[e] >= 0 ? std::sqrt(res.m[e]) : acc_t(INFINITY));
        acc_t* d_row = dist + p * Q + q0;
        int64_t* i_row = index + 2 * (p * Q + q0);
        for (int64_t e = e0; e < e1; ++e) {
          d_row[e] = d[e];
          i_row[2 * e] = res.t[e];
          i_row[2 * e + 1] = res.r[e];
        }
        if (!within) continue;
        for (int64_t e = e0; e < e1; ++e) {
          const int64_t qp = (q0 + e) * P + p;
          dist[qp] = d[e];
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
