// The tiled hard-negative search and its per-output backward scatter, as __host__ __device__ functions.
//
// The CUDA kernels run one tile per thread block: every thread of the block helps copy the tile's pair
// coefficients into shared memory (`*_tile_load`), then each thread computes its own outputs from them
// (`*_tile_compute`), keeping (min, argmin) in registers (the KeOps pattern). The CPU kernels drive the
// very same functions over every tile with at::parallel_for, emulating the threads of a block in a loop,
// so the CPU tests check the tiling, the tile boundaries and the reduction that the GPU runs.
#pragma once

#include "ee_math.h"

namespace ee {

constexpr int kPairTile = 16;     // hard_negative_pairs: a block computes kPairTile x kPairTile (p, q)
constexpr int kPointBlock = 128;  // hard_negative_points: outputs (p, t) per block, one per thread
constexpr int kPointTileQ = 32;   // hard_negative_points: pairs q streamed per shared-memory tile

// One side of the search: a set of `count` pairs over the `rows` rows of its embeddings. `coef` is
// (count, T) row-major, `pairs` (count, 2), `pair_label` (count,).
template <typename acc_t>
struct PairSet {
  const PointCoef<acc_t>* coef;
  const int64_t* pairs;
  const int64_t* pair_label;
  int64_t count, rows;
};

// What the search reads: the query pairs p (the rows of the output) and the reference pairs q whose points
// are the candidates. Within a batch both are the batch's pairs and the (p, q) grid is symmetric; with a
// reference set (a memory bank) `gram` is the cross-Gram X ref_X^T and the grid is rectangular.
template <typename acc_t>
struct SearchArgs {
  const acc_t* gram;  // (query.rows, ref.rows) row-major, in the accumulation type
  PairSet<acc_t> query, ref;
  int64_t T;
  bool within;  // ref is query itself
};

// A view of one tile's copy of `count` pairs: their coefficients, stored point-major (coef[r * count + e],
// so that the threads of a warp, which differ in the pair e, read consecutive 16-byte words), then their
// endpoints and labels.
template <typename acc_t>
struct PairSlab {
  PointCoef<acc_t>* coef;
  int64_t* i;
  int64_t* j;
  int64_t* label;
};

template <typename acc_t>
EE_HD size_t slab_bytes(int64_t count, int64_t T) {
  return size_t(count) * size_t(T) * sizeof(PointCoef<acc_t>) + size_t(3 * count) * sizeof(int64_t);
}

template <typename acc_t>
EE_HD PairSlab<acc_t> slab_at(void* base, int64_t count, int64_t T) {
  PairSlab<acc_t> s;
  s.coef = reinterpret_cast<PointCoef<acc_t>*>(base);
  s.i = reinterpret_cast<int64_t*>(s.coef + count * T);
  s.j = s.i + count;
  s.label = s.j + count;
  return s;
}

// A row index made safe to read: the CUDA ops do not read pair indices on the host (that would
// synchronize), so an invalid row is read as row 0, and its coefficients, which the table kernel sets to
// NaN, make every result that involves it NaN instead of an out-of-bounds access.
EE_HD int64_t safe_row(int64_t r, int64_t B) { return r >= 0 && r < B ? r : 0; }

// Copies pairs [first, first + count) of `set` into `slab`; thread `tid` of `nthreads` copies its share.
// Pairs past the set's end are left unread.
template <typename acc_t>
EE_HD void load_slab(const PairSet<acc_t>& set, int64_t T, PairSlab<acc_t> slab, int64_t first, int64_t count,
                     int tid, int nthreads) {
  const int64_t avail = set.count - first < count ? set.count - first : count;
  for (int64_t e = tid; e < avail * T; e += nthreads) {
    const int64_t pair = e / T, r = e - pair * T;
    slab.coef[r * count + pair] = set.coef[first * T + e];
  }
  for (int64_t e = tid; e < avail; e += nthreads) {
    slab.i[e] = safe_row(set.pairs[2 * (first + e)], set.rows);
    slab.j[e] = safe_row(set.pairs[2 * (first + e) + 1], set.rows);
    slab.label[e] = set.pair_label[first + e];
  }
}

// The CPU drivers' stand-in for a block's shared memory, aligned as the GPU's.
struct alignas(16) SharedWord {
  unsigned char bytes[16];
};

// Running (min, argmin) of ranked squared distances (ranked_sq_dist()), fed in increasing key order: a strict <
// keeps the first key of the minimum (and the first NaN); key -1 until the first candidate.
template <typename acc_t>
struct Best {
  acc_t d2;
  int64_t key;
};

template <typename acc_t>
EE_HD Best<acc_t> no_best() {
  Best<acc_t> b;
  b.d2 = acc_t(INFINITY);
  b.key = -1;
  return b;
}

template <typename acc_t>
EE_HD void consider(Best<acc_t>& best, acc_t d2, int64_t key) {
  if (d2 < best.d2 || best.key < 0) {
    best.d2 = d2;
    best.key = key;
  }
}

// ---------------------------------------------------------------------------------------------------------
// hard_negative_pairs: kPairTile x kPairTile tiles of the (p, q) grid; within a batch only those of its upper
// triangle, tile row bp <= tile column bq, each thread writing (p, q) and (q, p).

// The `linear`-th tile of the upper triangle (row-major over the lower triangle, transposed).
EE_HD void triangle_tile(int64_t linear, int64_t& bp, int64_t& bq) {
  int64_t r = int64_t((sqrt(8.0 * double(linear) + 1.0) - 1.0) / 2.0);
  while (r * (r + 1) / 2 > linear) --r;
  while ((r + 1) * (r + 2) / 2 <= linear) ++r;
  bq = r;
  bp = linear - r * (r + 1) / 2;
}

EE_HD int64_t tiles_of(int64_t count) { return (count + kPairTile - 1) / kPairTile; }

template <typename acc_t>
EE_HD int64_t pair_tiles(const SearchArgs<acc_t>& a) {
  const int64_t np = tiles_of(a.query.count);
  return a.within ? np * (np + 1) / 2 : np * tiles_of(a.ref.count);
}

// The `linear`-th tile: of the upper triangle within a batch, row-major over the rectangle otherwise.
template <typename acc_t>
EE_HD void pair_tile(const SearchArgs<acc_t>& a, int64_t linear, int64_t& bp, int64_t& bq) {
  if (a.within) {
    triangle_tile(linear, bp, bq);
    return;
  }
  const int64_t nq = tiles_of(a.ref.count);
  bp = linear / nq;
  bq = linear - bp * nq;
}

// Shared-memory layout of a pair tile: the slab of its kPairTile p-rows, then that of its q-columns.
template <typename acc_t>
EE_HD size_t pair_tile_bytes(int64_t T) { return 2 * slab_bytes<acc_t>(kPairTile, T); }

template <typename acc_t>
EE_HD void pair_tile_load(const SearchArgs<acc_t>& a, void* shared, int64_t bp, int64_t bq, int tid, int nthreads) {
  char* base = static_cast<char*>(shared);
  load_slab(a.query, a.T, slab_at<acc_t>(base, kPairTile, a.T), bp * kPairTile, kPairTile, tid, nthreads);
  load_slab(a.ref, a.T, slab_at<acc_t>(base + slab_bytes<acc_t>(kPairTile, a.T), kPairTile, a.T), bq * kPairTile,
            kPairTile, tid, nthreads);
}

// Thread (tp, tq) of tile (bp, bq): the output (p, q) = (bp*16+tp, bq*16+tq); within a batch the unordered
// pair p <= q, whose one scan over the T x T grid gives both dist[p, q] (argmin by t*T + r) and dist[q, p]
// (by r*T + t).
template <typename acc_t>
EE_HD void pair_tile_compute(const SearchArgs<acc_t>& a, const void* shared, int64_t bp, int64_t bq, int tp, int tq,
                             acc_t* dist, int64_t* index) {
  const int64_t p = bp * kPairTile + tp, q = bq * kPairTile + tq, P = a.query.count, Q = a.ref.count, T = a.T;
  if (p >= P || q >= Q || (a.within && q < p)) return;
  const char* base = static_cast<const char*>(shared);
  const PairSlab<acc_t> sp = slab_at<acc_t>(const_cast<char*>(base), kPairTile, T);
  const PairSlab<acc_t> sq = slab_at<acc_t>(const_cast<char*>(base) + slab_bytes<acc_t>(kPairTile, T), kPairTile, T);
  const int64_t pq = p * Q + q, qp = q * P + p;
  if (sp.label[tp] == sq.label[tq]) {
    dist[pq] = acc_t(INFINITY);
    index[2 * pq] = index[2 * pq + 1] = -1;
    if (a.within) {
      dist[qp] = acc_t(INFINITY);
      index[2 * qp] = index[2 * qp + 1] = -1;
    }
    return;
  }
  const int64_t i = sp.i[tp], j = sp.j[tp], k = sq.i[tq], l = sq.j[tq], ld = a.ref.rows;
  const acc_t g_ik = a.gram[i * ld + k], g_il = a.gram[i * ld + l];
  const acc_t g_jk = a.gram[j * ld + k], g_jl = a.gram[j * ld + l];
  // r outer: b's doubled dots depend on (q, r) alone, so each candidate (t, r) costs the few flops of
  // sq_dist_unclamped() and two comparisons. The scan visits r*T + t in increasing order, so the (q, p)
  // minimum keeps its first candidate under a strict <; the (p, q) one (key t*T + r) takes an equal value
  // only from a smaller t. Both start at (0, 0) with +inf: right when every candidate is +inf.
  acc_t fwd_d = acc_t(INFINITY), bwd_d = acc_t(INFINITY);
  int fwd_t = 0, fwd_r = 0, bwd_t = 0, bwd_r = 0;
  for (int r = 0; r < int(T); ++r) {
    const PointCoef<acc_t> b = sq.coef[r * kPairTile + tq];
    const acc_t dot2_i = doubled_dot(b.alpha, b.beta, g_ik, g_il), dot2_j = doubled_dot(b.alpha, b.beta, g_jk, g_jl);
    for (int t = 0; t < int(T); ++t) {
      const acc_t d = ranked_sq_dist(sq_dist_unclamped(sp.coef[t * kPairTile + tp], b.sqnorm, dot2_i, dot2_j));
      if (d < fwd_d || (d == fwd_d && t < fwd_t)) {
        fwd_d = d;
        fwd_t = t;
        fwd_r = r;
      }
      if (d < bwd_d) {
        bwd_d = d;
        bwd_t = t;
        bwd_r = r;
      }
    }
  }
  dist[pq] = acc_t(sqrt(unranked_sq_dist(fwd_d)));
  index[2 * pq] = fwd_t;
  index[2 * pq + 1] = fwd_r;
  if (!a.within) return;
  dist[qp] = acc_t(sqrt(unranked_sq_dist(bwd_d)));
  index[2 * qp] = bwd_r;   // in (q, p)'s own terms: (t of q, r of p)
  index[2 * qp + 1] = bwd_t;
}

// ---------------------------------------------------------------------------------------------------------
// hard_negative_points: a block owns kPointBlock consecutive outputs o = p*T + t and streams every reference
// pair q through shared memory, kPointTileQ at a time.

template <typename acc_t>
EE_HD size_t point_tile_bytes(int64_t T) { return slab_bytes<acc_t>(kPointTileQ, T); }

template <typename acc_t>
EE_HD void point_tile_load(const SearchArgs<acc_t>& a, void* shared, int64_t q0, int tid, int nthreads) {
  load_slab(a.ref, a.T, slab_at<acc_t>(shared, kPointTileQ, a.T), q0, kPointTileQ, tid, nthreads);
}

// Output o = p*T + t against the tile of pairs starting at q0; keys are q*T + r, visited in increasing order.
template <typename acc_t>
EE_HD void point_tile_compute(const SearchArgs<acc_t>& a, const void* shared, int64_t q0, int64_t o,
                              Best<acc_t>& best) {
  const int64_t T = a.T, p = o / T, B = a.query.rows;
  if (p >= a.query.count) return;
  const PairSlab<acc_t> s = slab_at<acc_t>(const_cast<void*>(shared), kPointTileQ, T);
  const int64_t i = safe_row(a.query.pairs[2 * p], B), j = safe_row(a.query.pairs[2 * p + 1], B);
  const int64_t label = a.query.pair_label[p];
  const PointCoef<acc_t> at = a.query.coef[o];
  const acc_t* gi = a.gram + i * a.ref.rows;
  const acc_t* gj = a.gram + j * a.ref.rows;
  const int64_t count = a.ref.count - q0 < kPointTileQ ? a.ref.count - q0 : kPointTileQ;
  for (int64_t e = 0; e < count; ++e) {
    if (s.label[e] == label) continue;
    const int64_t k = s.i[e], l = s.j[e];
    const acc_t g_ik = gi[k], g_il = gi[l], g_jk = gj[k], g_jl = gj[l];
    const int64_t key0 = (q0 + e) * T;
    for (int64_t r = 0; r < T; ++r)
      consider(best, sq_dist(at, s.coef[r * kPointTileQ + e], g_ik, g_il, g_jk, g_jl), key0 + r);
  }
}

template <typename acc_t>
EE_HD void point_write(const SearchArgs<acc_t>& a, int64_t o, const Best<acc_t>& best, acc_t* dist,
                       int64_t* index) {
  if (o >= a.query.count * a.T) return;
  const bool found = best.key >= 0;
  dist[o] = acc_t(found ? sqrt(unranked_sq_dist(best.d2)) : acc_t(INFINITY));
  index[2 * o] = found ? best.key / a.T : -1;
  index[2 * o + 1] = found ? best.key % a.T : -1;
}

// ---------------------------------------------------------------------------------------------------------
// Backward: the dG entries of one output. The GPU runs one thread per output and adds them atomically;
// the CPU runs the same scatter serially where the tests force it (routes_cpu.h); the CPU kernels use the
// same terms, owner-computed.

template <typename acc_t>
EE_HD PointRef<acc_t> point_ref(const PairSet<acc_t>& set, int64_t pair, int64_t t, int64_t T, bool normalize) {
  PointRef<acc_t> r;
  r.i = safe_row(set.pairs[2 * pair], set.rows);
  r.j = safe_row(set.pairs[2 * pair + 1], set.rows);
  r.t = t;
  r.n = T - 2;
  r.c = point_grad_coef(set.coef[pair * T + t], t, T - 2, normalize);
  return r;
}

// The gradient entries of the distance between a(p, t) of `query` and a(q, r) of `ref`: cross(row, col, v)
// with the row in p's pair and the column in q's, own(side, p or q, w, v) (distance_grad_entries()).
// Nothing for an index out of range (-1: no negative).
template <typename acc_t, typename Cross, typename Own>
EE_HD void output_entries(const PairSet<acc_t>& query, const PairSet<acc_t>& ref, int64_t T, bool normalize,
                          int64_t p, int64_t t, int64_t q, int64_t r, acc_t d, acc_t g, Cross&& cross, Own&& own) {
  if (t < 0 || r < 0 || t >= T || r >= T || q < 0 || q >= ref.count) return;
  distance_grad_entries(point_ref(query, p, t, T, normalize), point_ref(ref, q, r, T, normalize), d, g, cross,
                        [&](int side, int w, acc_t v) { own(side, side == 0 ? p : q, w, v); });
}

// Output (p, q) of hard_negative_pairs: points a(p, index[pq][0]) and a(q, index[pq][1]).
template <typename acc_t, typename Cross, typename Own>
EE_HD void pair_output_entries(const SearchArgs<acc_t>& a, bool normalize, int64_t p, int64_t q, acc_t d, acc_t g,
                               const int64_t* index, Cross&& cross, Own&& own) {
  const int64_t pq = p * a.ref.count + q;
  output_entries(a.query, a.ref, a.T, normalize, p, index[2 * pq], q, index[2 * pq + 1], d, g, cross, own);
}

// Output o = (p, t) of hard_negative_points: points a(p, t) and a(index[o][0], index[o][1]).
template <typename acc_t, typename Cross, typename Own>
EE_HD void point_output_entries(const SearchArgs<acc_t>& a, bool normalize, int64_t o, acc_t d, acc_t g,
                                const int64_t* index, Cross&& cross, Own&& own) {
  output_entries(a.query, a.ref, a.T, normalize, o / a.T, o % a.T, index[2 * o], index[2 * o + 1], d, g, cross, own);
}

// Pair (k, l)'s own entries (kk, kl, ll) as S = dG + dG^T holds them (2 kk at (k, k), kl at (k, l) and (l, k),
// 2 ll at (l, l)): rows k and l of S Y are to_k[0] y_k + to_k[1] y_l and to_l[0] y_k + to_l[1] y_l.
template <typename acc_t>
EE_HD void own_rows(const acc_t* own, acc_t* to_k, acc_t* to_l) {
  to_k[0] = own[0] + own[0];
  to_k[1] = own[1];
  to_l[0] = own[1];
  to_l[1] = own[2] + own[2];
}

// Within a batch every entry is one of dG (B x B): the own entries of a pair's point at (i, i), (i, j), (j, j).
template <typename acc_t, typename Emit>
struct WithinEntries {
  PairSet<acc_t> set;
  Emit emit;
  EE_HD void operator()(int64_t row, int64_t col, acc_t v) const { emit(row, col, v); }
  EE_HD void operator()(int, int64_t pair, int w, acc_t v) const {
    const int64_t i = safe_row(set.pairs[2 * pair], set.rows), j = safe_row(set.pairs[2 * pair + 1], set.rows);
    emit(w == 2 ? j : i, w == 0 ? i : j, v);
  }
};

}  // namespace ee
