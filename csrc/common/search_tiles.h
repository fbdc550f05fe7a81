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

// What the search reads. `coef` is (P, T) row-major, `pairs` (P, 2), `pair_label` (P,).
template <typename acc_t>
struct SearchArgs {
  const acc_t* gram;  // (B, B) row-major, X X^T in the accumulation type
  int64_t B;
  const PointCoef<acc_t>* coef;
  const int64_t* pairs;
  const int64_t* pair_label;
  int64_t P, T;
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

// Copies pairs [first, first + count) into `slab`; thread `tid` of `nthreads` copies its share. Rows past
// P are left unread.
template <typename acc_t>
EE_HD void load_slab(const SearchArgs<acc_t>& a, PairSlab<acc_t> slab, int64_t first, int64_t count, int tid,
                     int nthreads) {
  const int64_t avail = a.P - first < count ? a.P - first : count;
  for (int64_t e = tid; e < avail * a.T; e += nthreads) {
    const int64_t pair = e / a.T, r = e - pair * a.T;
    slab.coef[r * count + pair] = a.coef[first * a.T + e];
  }
  for (int64_t e = tid; e < avail; e += nthreads) {
    slab.i[e] = safe_row(a.pairs[2 * (first + e)], a.B);
    slab.j[e] = safe_row(a.pairs[2 * (first + e) + 1], a.B);
    slab.label[e] = a.pair_label[first + e];
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
// hard_negative_pairs: tiles of the upper triangle of the (p, q) grid, tile row bp <= tile column bq.

// The `linear`-th tile of the upper triangle (row-major over the lower triangle, transposed).
EE_HD void triangle_tile(int64_t linear, int64_t& bp, int64_t& bq) {
  int64_t r = int64_t((sqrt(8.0 * double(linear) + 1.0) - 1.0) / 2.0);
  while (r * (r + 1) / 2 > linear) --r;
  while ((r + 1) * (r + 2) / 2 <= linear) ++r;
  bq = r;
  bp = linear - r * (r + 1) / 2;
}

EE_HD int64_t triangle_tiles(int64_t P) {
  const int64_t nt = (P + kPairTile - 1) / kPairTile;
  return nt * (nt + 1) / 2;
}

// Shared-memory layout of a pair tile: the slab of its kPairTile p-rows, then that of its q-columns.
template <typename acc_t>
EE_HD size_t pair_tile_bytes(int64_t T) { return 2 * slab_bytes<acc_t>(kPairTile, T); }

template <typename acc_t>
EE_HD void pair_tile_load(const SearchArgs<acc_t>& a, void* shared, int64_t bp, int64_t bq, int tid, int nthreads) {
  char* base = static_cast<char*>(shared);
  load_slab(a, slab_at<acc_t>(base, kPairTile, a.T), bp * kPairTile, kPairTile, tid, nthreads);
  load_slab(a, slab_at<acc_t>(base + slab_bytes<acc_t>(kPairTile, a.T), kPairTile, a.T), bq * kPairTile, kPairTile,
            tid, nthreads);
}

// Thread (tp, tq) of tile (bp, bq): the unordered pair p = bp*16+tp < q = bq*16+tq (or the diagonal p == q).
// One scan over the T x T grid gives both dist[p, q] (argmin by t*T + r) and dist[q, p] (by r*T + t).
template <typename acc_t>
EE_HD void pair_tile_compute(const SearchArgs<acc_t>& a, const void* shared, int64_t bp, int64_t bq, int tp, int tq,
                             acc_t* dist, int64_t* index) {
  const int64_t p = bp * kPairTile + tp, q = bq * kPairTile + tq, P = a.P, T = a.T;
  if (p >= P || q >= P || q < p) return;
  const char* base = static_cast<const char*>(shared);
  const PairSlab<acc_t> sp = slab_at<acc_t>(const_cast<char*>(base), kPairTile, T);
  const PairSlab<acc_t> sq = slab_at<acc_t>(const_cast<char*>(base) + slab_bytes<acc_t>(kPairTile, T), kPairTile, T);
  const int64_t pq = p * P + q, qp = q * P + p;
  if (sp.label[tp] == sq.label[tq]) {
    dist[pq] = acc_t(INFINITY);
    dist[qp] = acc_t(INFINITY);
    index[2 * pq] = index[2 * pq + 1] = index[2 * qp] = index[2 * qp + 1] = -1;
    return;
  }
  const int64_t i = sp.i[tp], j = sp.j[tp], k = sq.i[tq], l = sq.j[tq], B = a.B;
  const acc_t g_ik = a.gram[i * B + k], g_il = a.gram[i * B + l], g_jk = a.gram[j * B + k], g_jl = a.gram[j * B + l];
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
  dist[qp] = acc_t(sqrt(unranked_sq_dist(bwd_d)));
  index[2 * qp] = bwd_r;   // in (q, p)'s own terms: (t of q, r of p)
  index[2 * qp + 1] = bwd_t;
}

// ---------------------------------------------------------------------------------------------------------
// hard_negative_points: a block owns kPointBlock consecutive outputs o = p*T + t and streams every pair q
// through shared memory, kPointTileQ at a time.

template <typename acc_t>
EE_HD size_t point_tile_bytes(int64_t T) { return slab_bytes<acc_t>(kPointTileQ, T); }

template <typename acc_t>
EE_HD void point_tile_load(const SearchArgs<acc_t>& a, void* shared, int64_t q0, int tid, int nthreads) {
  load_slab(a, slab_at<acc_t>(shared, kPointTileQ, a.T), q0, kPointTileQ, tid, nthreads);
}

// Output o = p*T + t against the tile of pairs starting at q0; keys are q*T + r, visited in increasing order.
template <typename acc_t>
EE_HD void point_tile_compute(const SearchArgs<acc_t>& a, const void* shared, int64_t q0, int64_t o, Best<acc_t>& best) {
  const int64_t T = a.T, p = o / T, B = a.B;
  if (p >= a.P) return;
  const PairSlab<acc_t> s = slab_at<acc_t>(const_cast<void*>(shared), kPointTileQ, T);
  const int64_t i = safe_row(a.pairs[2 * p], B), j = safe_row(a.pairs[2 * p + 1], B), label = a.pair_label[p];
  const PointCoef<acc_t> at = a.coef[o];
  const acc_t* gi = a.gram + i * B;
  const acc_t* gj = a.gram + j * B;
  const int64_t count = a.P - q0 < kPointTileQ ? a.P - q0 : kPointTileQ;
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
  if (o >= a.P * a.T) return;
  const bool found = best.key >= 0;
  dist[o] = acc_t(found ? sqrt(unranked_sq_dist(best.d2)) : acc_t(INFINITY));
  index[2 * o] = found ? best.key / a.T : -1;
  index[2 * o + 1] = found ? best.key % a.T : -1;
}

// ---------------------------------------------------------------------------------------------------------
// Backward: the dG entries of one output. The GPU runs one thread per output and adds them atomically;
// the CPU emulation (tests) adds them in a loop; the CPU kernels use the same terms, owner-computed.

template <typename acc_t>
EE_HD PointRef<acc_t> point_ref(const PointCoef<acc_t>* coef, const int64_t* pairs, int64_t B, int64_t pair, int64_t t,
                                int64_t T, bool normalize) {
  PointRef<acc_t> r;
  r.i = safe_row(pairs[2 * pair], B);
  r.j = safe_row(pairs[2 * pair + 1], B);
  r.t = t;
  r.n = T - 2;
  r.c = point_grad_coef(coef[pair * T + t], t, T - 2, normalize);
  return r;
}

// Output (p, q) of hard_negative_pairs: points a(p, index[pq][0]) and a(q, index[pq][1]).
template <typename acc_t, typename Emit>
EE_HD void pair_output_terms(const PointCoef<acc_t>* coef, const int64_t* pairs, int64_t B, int64_t P, int64_t T,
                             bool normalize, int64_t p, int64_t q, acc_t d, acc_t g, const int64_t* index, Emit&& emit) {
  const int64_t pq = p * P + q, t = index[2 * pq], r = index[2 * pq + 1];
  if (t < 0 || r < 0 || t >= T || r >= T) return;
  distance_grad_terms(point_ref(coef, pairs, B, p, t, T, normalize), point_ref(coef, pairs, B, q, r, T, normalize), d, g,
                      emit);
}

// Output o = (p, t) of hard_negative_points: points a(p, t) and a(index[o][0], index[o][1]).
template <typename acc_t, typename Emit>
EE_HD void point_output_terms(const PointCoef<acc_t>* coef, const int64_t* pairs, int64_t B, int64_t P, int64_t T,
                              bool normalize, int64_t o, acc_t d, acc_t g, const int64_t* index, Emit&& emit) {
  const int64_t q = index[2 * o], r = index[2 * o + 1];
  if (q < 0 || r < 0 || q >= P || r >= T) return;
  distance_grad_terms(point_ref(coef, pairs, B, o / T, o % T, T, normalize),
                      point_ref(coef, pairs, B, q, r, T, normalize), d, g, emit);
}

}  // namespace ee
