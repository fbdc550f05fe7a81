// In-place operations on a square row-major matrix and its transpose, in W x W tiles (W = lanes of one
// vector: 8 floats or 4 doubles) transposed in registers. A tile's column walk touches W rows only: with a
// power-of-two row length (B = 1024 floats is 4 KiB) every row of a column maps to the same L1 set, and a
// walk over more rows than the cache's ways evicts itself.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

#include "lanes_cpu.h"

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

// Tile row ti of g: for every tile (ti, tj), tj >= ti, and its mirror (tj, ti), either lower := upper^T
// (kSymmetrize false) or both := upper + lower^T. Diagonal and partial tiles go element by element.
template <bool kSymmetrize, typename acc_t>
EE_LANES_INLINE void mirror_tile_row_impl(acc_t* g, int64_t B, int64_t ti) {
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

EE_VECTOR_CLONES inline void mirror_tile_row(float* g, int64_t B, int64_t ti, bool symmetrize) {
  symmetrize ? mirror_tile_row_impl<true>(g, B, ti) : mirror_tile_row_impl<false>(g, B, ti);
}
EE_VECTOR_CLONES inline void mirror_tile_row(double* g, int64_t B, int64_t ti, bool symmetrize) {
  symmetrize ? mirror_tile_row_impl<true>(g, B, ti) : mirror_tile_row_impl<false>(g, B, ti);
}

// Tile rows go to tasks in pairs (k, tiles-1-k), so that each gets as much of the triangle.
template <typename acc_t>
void for_each_tile_row(acc_t* g, int64_t B, bool symmetrize) {
  constexpr int64_t W = Lanes<acc_t>::kWidth;
  const int64_t tiles = (B + W - 1) / W;
  at::parallel_for(0, (tiles + 1) / 2, 1, [&](int64_t begin, int64_t end) {
    for (int64_t k = begin; k < end; ++k) {
      mirror_tile_row(g, B, k, symmetrize);
      if (tiles - 1 - k != k) mirror_tile_row(g, B, tiles - 1 - k, symmetrize);
    }
  });
}

// g = g + g^T.
template <typename acc_t>
void symmetrize_in_place(acc_t* g, int64_t B) {
  for_each_tile_row(g, B, true);
}

// The lower triangle := the upper one's mirror.
template <typename acc_t>
void mirror_upper(acc_t* g, int64_t B) {
  for_each_tile_row(g, B, false);
}

}  // namespace ee
