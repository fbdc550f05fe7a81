// Vectors for the CPU's hot loops, written with the GCC/Clang vector extensions, so that one source gives
// AVX2 code in an AVX2 clone and SSE code in the baseline one, with no intrinsics and bit-identical results
// in both (setup.py compiles with -ffp-contract=off: no FMA contraction).
#pragma once

#include <cstdint>
#include <cstring>
#include <type_traits>

// The vector types only appear in functions that are inlined into the clones, never at a call boundary, so
// the ABI note GCC gives for 32-byte vectors without AVX does not apply (this header is included by the
// CPU sources only).
#pragma GCC diagnostic ignored "-Wpsabi"

namespace ee {

// The hot loops, compiled for AVX2 as well as the baseline and picked at run time (the extension is built
// for the baseline x86-64 ISA).
#if defined(__GNUC__) && defined(__x86_64__) && !defined(__clang__)
#define EE_VECTOR_CLONES __attribute__((target_clones("avx2", "default")))
#else
#define EE_VECTOR_CLONES
#endif
// Everything the clones call is forced inline, so that it is compiled for the clone's ISA (a call out to
// a baseline copy would run the loops in SSE and pass vectors through memory).
#if defined(__GNUC__)
#define EE_LANES_INLINE inline __attribute__((always_inline))
#else
#define EE_LANES_INLINE inline
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

}  // namespace ee
