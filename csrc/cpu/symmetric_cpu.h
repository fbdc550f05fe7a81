// In-place operations on a square row-major matrix and its transpose, in 8 x 8 tiles. A tile's column
// walk touches 8 rows only: with a power-of-two row length (B = 1024 floats is 4 KiB) every row of a
// column maps to the same L1 set, and a walk over more rows than the cache's ways evicts itself.
#pragma once

#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdint>

namespace ee {

// op(g[i][j], g[j][i]) for every i <= j (once, with both references to the same element on the diagonal).
// Off-diagonal full tiles are copied out row by row (contiguous reads), combined, and written back.
template <typename acc_t, typename Op>
void for_each_mirror_pair(acc_t* g, int64_t B, const Op& op) {
  constexpr int64_t kTile = 8;
  const int64_t tiles = (B + kTile - 1) / kTile, full = B / kTile;
  at::parallel_for(0, tiles, 1, [&](int64_t begin, int64_t end) {
    acc_t upper[kTile][kTile], lower[kTile][kTile];
    for (int64_t ti = begin; ti < end; ++ti)
      for (int64_t tj = ti; tj < tiles; ++tj) {
        const int64_t i0 = ti * kTile, j0 = tj * kTile;
        if (tj == ti || tj >= full) {  // diagonal or partial tile: element by element
          for (int64_t i = i0; i < std::min(B, i0 + kTile); ++i)
            for (int64_t j = std::max(i, j0); j < std::min(B, j0 + kTile); ++j) op(g[i * B + j], g[j * B + i]);
          continue;
        }
        for (int64_t r = 0; r < kTile; ++r)
          for (int64_t c = 0; c < kTile; ++c) {
            upper[r][c] = g[(i0 + r) * B + j0 + c];
            lower[r][c] = g[(j0 + r) * B + i0 + c];
          }
        for (int64_t r = 0; r < kTile; ++r)
          for (int64_t c = 0; c < kTile; ++c) op(upper[r][c], lower[c][r]);
        for (int64_t r = 0; r < kTile; ++r)
          for (int64_t c = 0; c < kTile; ++c) {
            g[(i0 + r) * B + j0 + c] = upper[r][c];
            g[(j0 + r) * B + i0 + c] = lower[r][c];
          }
      }
  });
}

// g = g + g^T.
template <typename acc_t>
void symmetrize_in_place(acc_t* g, int64_t B) {
  for_each_mirror_pair(g, B, [](acc_t& upper, acc_t& lower) {
    const acc_t v = upper + lower;
    upper = v;
    lower = v;
  });
}

// The lower triangle := the upper one's mirror.
template <typename acc_t>
void mirror_upper(acc_t* g, int64_t B) {
  for_each_mirror_pair(g, B, [](acc_t& upper, acc_t& lower) { lower = upper; });
}

}  // namespace ee
