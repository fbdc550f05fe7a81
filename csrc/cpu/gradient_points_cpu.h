// Gradient points of a chunk of pairs, in column blocks, and the sums of dX rows over them: the D-space half
// of hard_negative_pairs' backward through its selected points (search_cpu.cpp).
//
// The gradient point of point r of pair q = (k, l) is y = alpha x_k + beta x_l with the coefficients of its
// PointGradCoef. A chunk's points are stored block by block: block b holds columns [b Wb, (b+1) Wb) of every
// point, Wb = 128 bytes of acc_t, contiguous, zero-padded past D. Summing dX rows block by block, over all
// pairs before the next block, keeps the chunk's block (about 20 KiB at n = 8) in L1 while every pair reads it.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#if defined(__GNUC__) && defined(__x86_64__)
#include <immintrin.h>
#define EE_FMA_KERNELS 1
#define EE_FMA_TARGET __attribute__((target("avx2,fma")))
#endif

#include "lanes_cpu.h"

namespace ee {

template <typename acc_t>
struct ColumnBlocks {
  static constexpr int kVectors = 4;
  static constexpr int64_t kWidth = Lanes<acc_t>::kWidth * kVectors;  // columns per block: 128 bytes
  int64_t rows, blocks;

  ColumnBlocks(int64_t rows_, int64_t D) : rows(rows_), blocks((D + kWidth - 1) / kWidth) {}
  int64_t size() const { return rows * blocks * kWidth; }
  acc_t* row(acc_t* y, int64_t b, int64_t r) const { return y + (b * rows + r) * kWidth; }
  const acc_t* row(const acc_t* y, int64_t b, int64_t r) const { return y + (b * rows + r) * kWidth; }
};

// Row m of y: alpha x_k + beta x_l, its padding zero.
template <typename acc_t>
EE_LANES_INLINE void write_gradient_point_impl(const ColumnBlocks<acc_t>& layout, acc_t* y, int64_t m,
                                               const acc_t* xk, const acc_t* xl, acc_t alpha, acc_t beta, int64_t D) {
  using V = typename Lanes<acc_t>::V;
  constexpr int W = Lanes<acc_t>::kWidth;
  constexpr int64_t kBlock = ColumnBlocks<acc_t>::kWidth;
  for (int64_t b = 0; b < layout.blocks; ++b) {
    acc_t* out = layout.row(y, b, m);
    const int64_t d0 = b * kBlock;
    if (d0 + kBlock <= D) {
      for (int k = 0; k < ColumnBlocks<acc_t>::kVectors; ++k)
        store_lanes(out + k * W, alpha * load_lanes<V>(xk + d0 + k * W) + beta * load_lanes<V>(xl + d0 + k * W));
      continue;
    }
    for (int64_t k = 0; k < kBlock; ++k) out[k] = d0 + k < D ? alpha * xk[d0 + k] + beta * xl[d0 + k] : acc_t(0);
  }
}

EE_VECTOR_CLONES inline void write_gradient_point(const ColumnBlocks<float>& layout, float* y, int64_t m,
                                                  const float* xk, const float* xl, float alpha, float beta,
                                                  int64_t D) {
  write_gradient_point_impl(layout, y, m, xk, xl, alpha, beta, D);
}
EE_VECTOR_CLONES inline void write_gradient_point(const ColumnBlocks<double>& layout, double* y, int64_t m,
                                                  const double* xk, const double* xl, double alpha, double beta,
                                                  int64_t D) {
  write_gradient_point_impl(layout, y, m, xk, xl, alpha, beta, D);
}

// What the sums over one column block read: per pair p (component order), its rows (pairs[2p], pairs[2p+1])
// of dX's block and its count[p] terms, slots apart: the chunk's point m and the weights c0, c1 of each.
template <typename acc_t>
struct BlockTerms {
  const int64_t *pair_ids, *pairs;
  int64_t pair_count;
  const int32_t* m;
  const acc_t *c0, *c1;
  const int64_t* count;
  int64_t slots;
};

// For every pair of `terms`, over one column block: y0 += sum_u c0[u] * y[m[u]], y1 += sum_u c1[u] * y[m[u]]
// (y0, y1 its two rows of dX's block, distinct: check_pair_values rejects (i, i)). Eight accumulators, the
// point's four vectors and the two weights fit the sixteen vector registers.
template <typename acc_t, typename Madd>
EE_LANES_INLINE void add_gradient_points_impl(const acc_t* block, const BlockTerms<acc_t>& terms, acc_t* dx_block,
                                              int64_t stride, Madd&& madd) {
  constexpr int W = Lanes<acc_t>::kWidth;
  constexpr int64_t kPrefetchPairs = 4;
  constexpr int64_t kBlock = ColumnBlocks<acc_t>::kWidth;
  for (int64_t e = 0; e < terms.pair_count; ++e) {
    const int64_t p = terms.pair_ids[e], count = terms.count[p];
    if (count == 0) continue;
    if (e + kPrefetchPairs < terms.pair_count) {  // rows `stride` apart: a page each, not prefetched
      const int64_t ahead = terms.pair_ids[e + kPrefetchPairs];
      for (int r = 0; r < 2; ++r)
        for (int64_t k = 0; k < kBlock; k += 64 / int64_t(sizeof(acc_t)))
          __builtin_prefetch(dx_block + terms.pairs[2 * ahead + r] * stride + k, 1);
    }
    acc_t *y0 = dx_block + terms.pairs[2 * p] * stride, *y1 = dx_block + terms.pairs[2 * p + 1] * stride;
    const int32_t* m = terms.m + p * terms.slots;
    const acc_t *c0 = terms.c0 + p * terms.slots, *c1 = terms.c1 + p * terms.slots;
    auto a0 = madd.load(y0), a1 = madd.load(y0 + W), a2 = madd.load(y0 + 2 * W), a3 = madd.load(y0 + 3 * W);
    auto b0 = madd.load(y1), b1 = madd.load(y1 + W), b2 = madd.load(y1 + 2 * W), b3 = madd.load(y1 + 3 * W);
    for (int64_t u = 0; u < count; ++u) {
      const acc_t* r = block + int64_t(m[u]) * kBlock;
      const auto w0 = madd.broadcast(c0 + u), w1 = madd.broadcast(c1 + u);
      const auto v0 = madd.load(r), v1 = madd.load(r + W), v2 = madd.load(r + 2 * W), v3 = madd.load(r + 3 * W);
      a0 = madd(w0, v0, a0);
      b0 = madd(w1, v0, b0);
      a1 = madd(w0, v1, a1);
      b1 = madd(w1, v1, b1);
      a2 = madd(w0, v2, a2);
      b2 = madd(w1, v2, b2);
      a3 = madd(w0, v3, a3);
      b3 = madd(w1, v3, b3);
    }
    madd.store(y0, a0);
    madd.store(y0 + W, a1);
    madd.store(y0 + 2 * W, a2);
    madd.store(y0 + 3 * W, a3);
    madd.store(y1, b0);
    madd.store(y1 + W, b1);
    madd.store(y1 + 2 * W, b2);
    madd.store(y1 + 3 * W, b3);
  }
}

// Multiply-add as two operations (setup.py compiles with -ffp-contract=off), on the vector extensions.
template <typename acc_t>
struct PlainMadd {
  using V = typename Lanes<acc_t>::V;
  EE_LANES_INLINE V load(const acc_t* p) const { return load_lanes<V>(p); }
  EE_LANES_INLINE V broadcast(const acc_t* p) const { return V{} + *p; }
  EE_LANES_INLINE void store(acc_t* p, V v) const { store_lanes(p, v); }
  EE_LANES_INLINE V operator()(V w, V v, V acc) const { return acc + w * v; }
};

EE_VECTOR_CLONES inline void add_gradient_points_plain(const float* block, const BlockTerms<float>& terms,
                                                       float* dx_block, int64_t stride) {
  add_gradient_points_impl(block, terms, dx_block, stride, PlainMadd<float>{});
}
EE_VECTOR_CLONES inline void add_gradient_points_plain(const double* block, const BlockTerms<double>& terms,
                                                       double* dx_block, int64_t stride) {
  add_gradient_points_impl(block, terms, dx_block, stride, PlainMadd<double>{});
}

#ifdef EE_FMA_KERNELS
// The same sums with fused multiply-adds: without them a multiply-add is two instructions and the loop is
// bound by issuing them. The gradient has no exactness contract that
// FMA's single rounding would break; the forward search, whose argmins must not depend on the CPU, has none.
struct FmaMadd {
  EE_FMA_TARGET __m256 load(const float* p) const { return _mm256_loadu_ps(p); }
  EE_FMA_TARGET __m256d load(const double* p) const { return _mm256_loadu_pd(p); }
  EE_FMA_TARGET __m256 broadcast(const float* p) const { return _mm256_broadcast_ss(p); }
  EE_FMA_TARGET __m256d broadcast(const double* p) const { return _mm256_broadcast_sd(p); }
  EE_FMA_TARGET void store(float* p, __m256 v) const { _mm256_storeu_ps(p, v); }
  EE_FMA_TARGET void store(double* p, __m256d v) const { _mm256_storeu_pd(p, v); }
  EE_FMA_TARGET __m256 operator()(__m256 w, __m256 v, __m256 acc) const { return _mm256_fmadd_ps(w, v, acc); }
  EE_FMA_TARGET __m256d operator()(__m256d w, __m256d v, __m256d acc) const { return _mm256_fmadd_pd(w, v, acc); }
};

template <typename acc_t>
EE_FMA_TARGET void add_gradient_points_fma(const acc_t* block, const BlockTerms<acc_t>& terms, acc_t* dx_block,
                                           int64_t stride) {
  add_gradient_points_impl(block, terms, dx_block, stride, FmaMadd{});
}
#endif

#ifdef EE_FMA_KERNELS
// Whether the FMA sums run: the CPU has AVX2 and FMA, and ATen's ISA override does not ask for the baseline
// (ATEN_CPU_CAPABILITY=default, as for ATen's own kernels; the tests use it to run the other sums).
inline bool use_fma_kernels() {
  static const bool use = [] {
    const char* cap = std::getenv("ATEN_CPU_CAPABILITY");
    const bool baseline = cap != nullptr && std::strcmp(cap, "default") == 0;
    return !baseline && __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  }();
  return use;
}
#endif

// dx_block: dX's column block (row r at r * stride, Wb columns each).
template <typename acc_t>
inline void add_gradient_points(const acc_t* block, const BlockTerms<acc_t>& terms, acc_t* dx_block, int64_t stride) {
#ifdef EE_FMA_KERNELS
  if (use_fma_kernels()) return add_gradient_points_fma(block, terms, dx_block, stride);
#endif
  add_gradient_points_plain(block, terms, dx_block, stride);
}

}  // namespace ee
