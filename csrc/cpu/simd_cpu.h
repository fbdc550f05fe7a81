// Vectors for the CPU's hot loops, written with the GCC/Clang vector extensions: one source gives AVX2 code
// and baseline (SSE) code with bit-identical results (setup.py compiles with -ffp-contract=off: no FMA
// contraction), and each hot loop is compiled for both ISAs and picked at run time (EE_VECTORIZED).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "routes_cpu.h"

// Vectors cross only inlined calls, so GCC's ABI note on 32-byte vectors in baseline code does not apply.
#pragma GCC diagnostic ignored "-Wpsabi"

namespace ee {

// Everything a hot loop calls is forced inline, so that it is compiled for the ISA of the copy that runs it.
#define EE_LANES_INLINE inline __attribute__((always_inline))

// EE_VECTORIZED(f): f(args...) runs f_impl(args...), an EE_LANES_INLINE template, compiled for AVX2 or for the
// baseline x86-64 ISA the extension is built for, as cpu_routes().avx2 selects (routes_cpu.h).
#if defined(__GNUC__) && defined(__x86_64__)
#define EE_VECTORIZED(f)                                                                          \
  template <typename... A>                                                                        \
  __attribute__((target("avx2"))) auto f##_avx2(A&&... a) { return f##_impl(a...); }             \
  template <typename... A>                                                                        \
  auto f##_baseline(A&&... a) { return f##_impl(a...); }                                          \
  template <typename... A>                                                                        \
  auto f(A&&... a) { return cpu_routes().avx2 ? f##_avx2(a...) : f##_baseline(a...); }
#else
#define EE_VECTORIZED(f) template <typename... A> auto f(A&&... a) { return f##_impl(a...); }
#endif

// One vector of V lanes of acc_t (float or double), and the vector of integers (keys, masks) of the same
// element width.
template <typename acc_t>
struct Lanes {
  typedef std::conditional_t<sizeof(acc_t) == 4, int32_t, int64_t> key_t;
  typedef acc_t V __attribute__((vector_size(32)));
  typedef key_t K __attribute__((vector_size(32)));
  static constexpr int kWidth = 32 / sizeof(acc_t);
};

template <typename T, typename E>
EE_LANES_INLINE T load_lanes(const E* p) {
  T v;
  std::memcpy(&v, p, sizeof(T));
  return v;
}
template <typename T, typename E>
EE_LANES_INLINE void store_lanes(E* p, const T& v) {
  std::memcpy(p, &v, sizeof(T));
}

// (even, odd) = the even and the odd elements of the 2V consecutive elements (lo, hi).
template <typename T>
EE_LANES_INLINE void deinterleave_lanes(const T& lo, const T& hi, T& even, T& odd) {
  if constexpr (sizeof(lo[0]) == 4) {
    even = __builtin_shufflevector(lo, hi, 0, 2, 4, 6, 8, 10, 12, 14);
    odd = __builtin_shufflevector(lo, hi, 1, 3, 5, 7, 9, 11, 13, 15);
  } else {
    even = __builtin_shufflevector(lo, hi, 0, 2, 4, 6);
    odd = __builtin_shufflevector(lo, hi, 1, 3, 5, 7);
  }
}

// y += sum_u v[u] * X[col[u]]: one row of dX summed in D-space, a chunk of columns at a time in registers, so
// that each row of X named is read once per chunk and y once.
template <typename acc_t>
EE_LANES_INLINE void add_weighted_rows_impl(const acc_t* x, int64_t D, const int64_t* col, const acc_t* v,
                                           int64_t count, acc_t* y) {
  using V = typename Lanes<acc_t>::V;
  constexpr int W = Lanes<acc_t>::kWidth, kVectors = 8, kChunk = W * kVectors;
  int64_t d0 = 0;
  for (; d0 + kChunk <= D; d0 += kChunk) {
    V acc[kVectors];
    for (int k = 0; k < kVectors; ++k) acc[k] = load_lanes<V>(y + d0 + k * W);
    for (int64_t u = 0; u < count; ++u)
      for (int k = 0; k < kVectors; ++k) acc[k] += v[u] * load_lanes<V>(x + col[u] * D + d0 + k * W);
    for (int k = 0; k < kVectors; ++k) store_lanes(y + d0 + k * W, acc[k]);
  }
  for (; d0 < D; ++d0)
    for (int64_t u = 0; u < count; ++u) y[d0] += v[u] * x[col[u] * D + d0];
}
EE_VECTORIZED(add_weighted_rows)

}  // namespace ee
