// The Gram matrix G = X X^T of the forward, its lower triangle mirrored, and dG + dG^T of the backward, in W x W
// tiles transposed in registers: a tile's column walk touches W rows only, where a walk down a whole column of a
// power-of-two row length maps every row to the same L1 set and evicts itself.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "simd_cpu.h"

namespace ee {

// The W x W transpose of rows r[0..W), in place: the unpack / shuffle / lane-swap network (AVX2: 24
// shuffles for 8 floats, 8 for 4 doubles).
template <typename acc_t>
EE_LANES_INLINE void transpose_lanes(typename Lanes<acc_t>::V* r) {
  using V = typename Lanes<acc_t>::V;
  if constexpr (Lanes<acc_t>::kWidth == 8) {
    V t[8], s[8];
    for (int k = 0; k < 4; ++k) {
      t[2 * k] = __builtin_shufflevector(r[2 * k], r[2 * k + 1], 0, 8, 1, 9, 4, 12, 5, 13);
      t[2 * k + 1] = __builtin_shufflevector(r[2 * k], r[2 * k + 1], 2, 10, 3, 11, 6, 14, 7, 15);
    }
    for (int h = 0; h < 2; ++h)  // h = 0: rows 0-3, h = 1: rows 4-7
      for (int k = 0; k < 2; ++k) {
        const V a = t[4 * h + k], b = t[4 * h + k + 2];
        s[4 * h + 2 * k] = __builtin_shufflevector(a, b, 0, 1, 8, 9, 4, 5, 12, 13);
        s[4 * h + 2 * k + 1] = __builtin_shufflevector(a, b, 2, 3, 10, 11, 6, 7, 14, 15);
      }
    for (int c = 0; c < 4; ++c) {
      r[c] = __builtin_shufflevector(s[c], s[c + 4], 0, 1, 2, 3, 8, 9, 10, 11);
      r[c + 4] = __builtin_shufflevector(s[c], s[c + 4], 4, 5, 6, 7, 12, 13, 14, 15);
    }
  } else {
    static_assert(Lanes<acc_t>::kWidth == 4, "a vector holds 8 floats or 4 doubles");
    const V t0 = __builtin_shufflevector(r[0], r[1], 0, 4, 2, 6), t1 = __builtin_shufflevector(r[0], r[1], 1, 5, 3, 7);
    const V t2 = __builtin_shufflevector(r[2], r[3], 0, 4, 2, 6), t3 = __builtin_shufflevector(r[2], r[3], 1, 5, 3, 7);
    r[0] = __builtin_shufflevector(t0, t2, 0, 1, 4, 5);
    r[1] = __builtin_shufflevector(t1, t3, 0, 1, 4, 5);
    r[2] = __builtin_shufflevector(t0, t2, 2, 3, 6, 7);
    r[3] = __builtin_shufflevector(t1, t3, 2, 3, 6, 7);
  }
}

// Tile row ti of g and its mirror: lower := upper^T, or both := upper + lower^T (kSymmetrize), element-wise on
// diagonal and partial tiles.
template <bool kSymmetrize, typename acc_t>
EE_LANES_INLINE void mirror_tiles(acc_t* g, int64_t B, int64_t ti) {
  using V = typename Lanes<acc_t>::V;
  constexpr int64_t W = Lanes<acc_t>::kWidth;
  const int64_t tiles = (B + W - 1) / W, full = B / W, i0 = ti * W;
  for (int64_t tj = ti; tj < tiles; ++tj) {
    const int64_t j0 = tj * W;
    if (tj == ti || tj >= full) {
      for (int64_t i = i0; i < std::min(B, i0 + W); ++i)
        for (int64_t j = std::max(i, j0); j < std::min(B, j0 + W); ++j) {
          acc_t &upper = g[i * B + j], &lower = g[j * B + i];
          if constexpr (kSymmetrize) {
            upper = upper + lower;
            lower = upper;
          } else {
            lower = upper;
          }
        }
      continue;
    }
    V upper[W];
    for (int64_t r = 0; r < W; ++r) upper[r] = load_lanes<V>(g + (i0 + r) * B + j0);
    if constexpr (kSymmetrize) {
      V lower[W];
      for (int64_t r = 0; r < W; ++r) lower[r] = load_lanes<V>(g + (j0 + r) * B + i0);
      transpose_lanes<acc_t>(lower);
      for (int64_t r = 0; r < W; ++r) {
        upper[r] = upper[r] + lower[r];
        store_lanes(g + (i0 + r) * B + j0, upper[r]);
      }
    }
    transpose_lanes<acc_t>(upper);
    for (int64_t r = 0; r < W; ++r) store_lanes(g + (j0 + r) * B + i0, upper[r]);
  }
}

template <typename acc_t>
EE_LANES_INLINE void mirror_tile_row_impl(acc_t* g, int64_t B, int64_t ti, bool symmetrize) {
  symmetrize ? mirror_tiles<true>(g, B, ti) : mirror_tiles<false>(g, B, ti);
}
EE_VECTORIZED(mirror_tile_row)

// In place on the B x B matrix g: the lower triangle := the upper one's mirror, or with `symmetrize`
// g := g + g^T. Tile rows go to tasks in pairs (k, tiles-1-k), so that each gets as much of the triangle.
template <typename acc_t>
void mirror_in_place(acc_t* g, int64_t B, bool symmetrize) {
  const int64_t tiles = (B + Lanes<acc_t>::kWidth - 1) / Lanes<acc_t>::kWidth;
  at::parallel_for(0, (tiles + 1) / 2, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      mirror_tile_row(g, B, k, symmetrize);
      if (tiles - 1 - k != k) mirror_tile_row(g, B, tiles - 1 - k, symmetrize);
    }
  });
}

// G = X X^T. For large B only the block rows on and right of the diagonal are multiplied, one BLAS call per
// panel of 64 rows (fewer, longer calls than square blocks), and `lower_missing` is set: mirror_in_place()
// fills the lower triangle where a search reads it.
inline at::Tensor gram_cpu(const at::Tensor& X, bool& lower_missing) {
  constexpr int64_t kPanelRows = 64, kMinRows = 512;
  const int64_t B = X.size(0);
  lower_missing = B >= kMinRows;
  if (!lower_missing) return at::mm(X, X.t());
  at::Tensor G = at::empty({B, B}, X.options());
  for (int64_t i0 = 0; i0 < B; i0 += kPanelRows) {
    const int64_t rows = std::min(kPanelRows, B - i0);
    at::Tensor panel = G.narrow(0, i0, rows).narrow(1, i0, B - i0);
    at::mm_out(panel, X.narrow(0, i0, rows), X.narrow(0, i0, B - i0).t());
  }
  return G;
}

// Whether max(i_p, j_p) < min(i_q, j_q) for p < q (the adjacent layout of a batch sorted by class): the pair
// search, which visits q >= p, then reads the Gram's upper triangle only.
inline bool pairs_ascending(const at::Tensor& pairs) {
  const int64_t* pr = pairs.data_ptr<int64_t>();
  int64_t seen = -1;
  for (int64_t q = 0; q < pairs.size(0); ++q) {
    if (std::min(pr[2 * q], pr[2 * q + 1]) <= seen) return false;
    seen = std::max(pr[2 * q], pr[2 * q + 1]);
  }
  return true;
}

}  // namespace ee
