// Arithmetic of Embedding Expansion shared by the CPU and CUDA kernels (docs/design.md §2, §4).
//
// Every augmented point is a(p, t) = alpha * x_i + beta * x_j, so distances between augmented points
// follow from Gram entries G = X X^T. The helpers here are __host__ __device__ so that the CPU build,
// and with it the CPU tests, run exactly the formulas the GPU runs.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__) || defined(__HIPCC__)
#define EE_HD __host__ __device__ __forceinline__
#elif defined(__GNUC__)
// Forced inline on the CPU as well: the vectorized row path calls some of these from its AVX2 copies
// (simd_cpu.h), and a call out to a baseline copy would run them in SSE.
#define EE_HD inline __attribute__((always_inline))
#else
#define EE_HD inline
#endif

namespace ee {

// torch.nn.functional.normalize's default: a synthetic point is u / max(||u||, kNormEps).
constexpr double kNormEps = 1e-12;

// What a synthetic point u is divided by: max(||u||, kNormEps), or 1 without normalization.
template <typename acc_t>
EE_HD acc_t normalize_denominator(acc_t unorm, bool normalize) {
  if (!normalize) return acc_t(1);
  return unorm >= acc_t(kNormEps) ? unorm : acc_t(kNormEps);
}

// The backward of u / normalize_denominator() removes s / ||u|| times u from the gradient, s = <u / ||u||, grad>,
// where u was divided by its own norm; nothing where it was divided by eps or not normalized.
template <typename acc_t>
EE_HD acc_t normalize_projection(acc_t s, acc_t unorm, bool normalize) {
  return normalize && unorm >= acc_t(kNormEps) ? s / unorm : acc_t(0);
}

// One augmented point as a combination of its pair's endpoints, plus what its backward needs.
// 16-byte aligned so that a GPU thread reads a float point in one 128-bit load (no bank conflicts).
template <typename acc_t>
struct alignas(16) PointCoef {
  acc_t alpha;   // weight of x_i in the point's value (0 when u == 0 exactly: the point is the zero vector)
  acc_t beta;    // weight of x_j
  acc_t sqnorm;  // ||a(p, t)||^2
  acc_t unorm;   // ||u|| for a synthetic point, -1 for an original (never re-normalized)
};

// Interpolation weights of u = ((n+1-t) x_i + t x_j) / (n+1): (n+1-t)/(n+1) and t/(n+1).
template <typename acc_t>
EE_HD acc_t weight_i(int64_t t, int64_t n) { return acc_t(n + 1 - t) / acc_t(n + 1); }
template <typename acc_t>
EE_HD acc_t weight_j(int64_t t, int64_t n) { return acc_t(t) / acc_t(n + 1); }

// u[d] = ((n+1-t) x_i[d] + t x_j[d]) / (n+1), rounded as the reference rounds it: two products, their sum,
// then the division, never a fused multiply-add. (An FMA would turn the exact zero midpoint of antipodal
// endpoints, round(w x) - round(w x) = 0, into rounding noise that normalization then blows up.)
template <typename acc_t>
EE_HD acc_t interpolate(acc_t xi, acc_t xj, int64_t t, int64_t n) {
  const acc_t a = acc_t(n + 1 - t), b = acc_t(t);
#ifdef __CUDA_ARCH__
  if constexpr (sizeof(acc_t) == 4) {
    return __fadd_rn(__fmul_rn(a, xi), __fmul_rn(b, xj)) / acc_t(n + 1);
  } else {
    return __dadd_rn(__dmul_rn(a, xi), __dmul_rn(b, xj)) / acc_t(n + 1);
  }
#else
  return (a * xi + b * xj) / acc_t(n + 1);  // setup.py compiles the CPU code with -ffp-contract=off
#endif
}

// Coefficients of a(p, t) given ||u|| (synthetic, 1 <= t <= n) or the endpoint's squared norm (originals).
// For a normalized point the squared norm is taken as exactly 1 (its true value), so that distances
// between unit points do not inherit the rounding of ||u||.
template <typename acc_t>
EE_HD PointCoef<acc_t> point_coef(int64_t t, int64_t n, bool normalize, acc_t unorm, acc_t endpoint_sqnorm) {
  PointCoef<acc_t> c;
  if (t == 0 || t == n + 1) {
    c.alpha = t == 0 ? acc_t(1) : acc_t(0);
    c.beta = t == 0 ? acc_t(0) : acc_t(1);
    c.sqnorm = endpoint_sqnorm;
    c.unorm = acc_t(-1);
    return c;
  }
  const acc_t wi = weight_i<acc_t>(t, n), wj = weight_j<acc_t>(t, n);
  c.unorm = unorm;
  if (!normalize) {
    c.alpha = wi;
    c.beta = wj;
    c.sqnorm = unorm * unorm;
  } else if (unorm >= acc_t(kNormEps)) {
    c.alpha = wi / unorm;
    c.beta = wj / unorm;
    c.sqnorm = acc_t(1);
  } else if (unorm > acc_t(0)) {  // F.normalize divides by eps: u / eps, a short vector
    c.alpha = wi / acc_t(kNormEps);
    c.beta = wj / acc_t(kNormEps);
    c.sqnorm = (unorm / acc_t(kNormEps)) * (unorm / acc_t(kNormEps));
  } else {  // u == 0 exactly (antipodal endpoints): the point is the zero vector
    c.alpha = acc_t(0);
    c.beta = acc_t(0);
    c.sqnorm = acc_t(0);
  }
  return c;
}

// 2 <b, x_i> and 2 <b, x_j> for b = (alpha x_k + beta x_l), from the Gram entries g_ik, g_il (resp. g_jk,
// g_jl): what a point b contributes to its squared distances from the points of pair (i, j). Doubled here
// (s + s is exact) so that the CPU's row path can tabulate them per candidate b. T is acc_t, or on the CPU a
// vector of acc_t lanes (simd_cpu.h), which then computes exactly these operations lane by lane.
#if defined(__GNUC__) && !defined(__CUDACC__) && !defined(__HIPCC__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wpsabi"  // T a 32-byte vector: always inlined, never passed across a call
#endif
template <typename T>
EE_HD T doubled_dot(T alpha, T beta, T g_k, T g_l) {
  const T s = alpha * g_k + beta * g_l;
  return s + s;
}

// ||a||^2 + ||b||^2 - 2 <a, b> for a = (aa x_i + ba x_j), given b's norm and doubled dots; not clamped. T as
// in doubled_dot().
template <typename acc_t, typename T>
EE_HD T sq_dist_unclamped(const PointCoef<acc_t>& a, T b_sqnorm, T dot2_i, T dot2_j) {
  return a.sqnorm + (b_sqnorm - (a.alpha * dot2_i + a.beta * dot2_j));
}
#if defined(__GNUC__) && !defined(__CUDACC__) && !defined(__HIPCC__)
#pragma GCC diagnostic pop
#endif

// A squared distance clamped at 0 against cancellation, as a running minimum under < ranks it: NaN (which
// torch.min propagates) as -1, below every distance, so that the first NaN of a scan wins. Finite values are
// the clamped distance itself; unranked_sq_dist() gives NaN back.
template <typename T>
EE_HD T ranked_sq_dist(T d2) {
  return d2 > T(0) ? d2 : (d2 == d2 ? T(0) : T(-1));
}

template <typename T>
EE_HD T unranked_sq_dist(T ranked) {
  return ranked < T(0) ? T(NAN) : ranked;
}

// Squared distance between a = (aa x_i + ba x_j) and b = (ab x_k + bb x_l) from the four Gram entries
// g_ik, g_il, g_jk, g_jl, ranked (ranked_sq_dist()).
template <typename acc_t>
EE_HD acc_t sq_dist(const PointCoef<acc_t>& a, const PointCoef<acc_t>& b, acc_t g_ik, acc_t g_il, acc_t g_jk,
                    acc_t g_jl) {
  return ranked_sq_dist(sq_dist_unclamped(a, b.sqnorm, doubled_dot(b.alpha, b.beta, g_ik, g_il),
                                          doubled_dot(b.alpha, b.beta, g_jk, g_jl)));
}

// What the gradient of a distance needs from one of its points, with the cases of normalization folded
// into numbers once per point (the CPU tabulates them; a GPU thread forms them from the point's PointCoef).
// Gradient of dist = ||a - b|| as the weights of its dG entries (dX = (dG + dG^T) X): the cross entries
// between a's pair (i, j) and b's pair (k, l) are -2 gd (alpha_a|beta_a)(alpha_b|beta_b), gd = dL/d(d^2);
// the own entries of a point of pair (i, j) are own * (wi^2, 2 wi wj, wj^2) at (i,i), (i,j), (j,j), where
// own = gd * d(d^2)/d(U) and U = ||u||^2 = wi^2 G_ii + 2 wi wj G_ij + wj^2 G_jj.
template <typename acc_t>
struct PointGradCoef {
  // The nominal coefficients c_i / max(|u|, eps): the point's own, except where its value used 0 (u == 0,
  // or NaN), where they are c_i / eps (the derivative of u / eps, as in F.normalize).
  acc_t alpha, beta;
  acc_t sqnorm;     // ||a||^2
  // d(d^2)/d(U) is <a, b> * own_slope + own_const, one of the two being 0: 1 where ||a||^2 is U itself
  // (originals, or no normalization: the coefficients are constant); <a, b> / |u|^2 for a = u / |u|
  // (d^2 = 2 - 2<a, b>); 1 / eps^2 for a = u / eps (||a||^2 = U / eps^2); 0 at u == 0, where the gradient
  // 2 w u / eps^2 is exactly 0 and must not be spelled as 1e24-sized entries that cancel only in exact
  // arithmetic.
  acc_t own_slope, own_const;
};

template <typename acc_t>
EE_HD PointGradCoef<acc_t> point_grad_coef(const PointCoef<acc_t>& c, int64_t t, int64_t n, bool normalize) {
  PointGradCoef<acc_t> r{c.alpha, c.beta, c.sqnorm, acc_t(0), acc_t(1)};
  if (!normalize || t == 0 || t == n + 1) return r;
  if (c.unorm >= acc_t(kNormEps)) {
    r.own_slope = acc_t(1) / (c.unorm * c.unorm);
    r.own_const = acc_t(0);
    return r;
  }
  if (!(c.unorm > acc_t(0))) {
    r.alpha = weight_i<acc_t>(t, n) / acc_t(kNormEps);
    r.beta = weight_j<acc_t>(t, n) / acc_t(kNormEps);
  }
  r.own_const = c.unorm > acc_t(0) ? acc_t(1) / acc_t(kNormEps * kNormEps) : acc_t(0);
  return r;
}

// One augmented point of a selected negative pair, seen from the backward.
template <typename acc_t>
struct PointRef {
  int64_t i, j;  // rows of its pair's endpoints
  int64_t t, n;  // position along the pair, and n_inner
  PointGradCoef<acc_t> c;
};

// The gradient of dist = ||a - b|| (the forward's value d) with upstream gradient g: the cross entry
// (a.x, b.y) is cross * (aa|ba) * (ab|bb), the own entries of a and b are own_a and own_b times their
// weights. At d == 0 the gradient is 0, as torch's norm gives (`any` is false then, and when g == 0).
template <typename acc_t>
struct DistanceGrad {
  bool any;
  acc_t cross, aa, ba, ab, bb;
  acc_t own_a, own_b;
};

// The own entries' weights (wi^2, 2 wi wj, wj^2) of point t of n.
template <typename acc_t>
EE_HD void own_weights(int64_t t, int64_t n, acc_t& ii, acc_t& ij, acc_t& jj) {
  const acc_t wi = weight_i<acc_t>(t, n), wj = weight_j<acc_t>(t, n);
  ii = wi * wi;
  ij = acc_t(2) * wi * wj;
  jj = wj * wj;
}

// Arithmetic rather than a select on own_slope: which case a selected point is in is data-dependent, and a
// branch on it mispredicts.
template <typename acc_t>
EE_HD acc_t own_factor(const PointGradCoef<acc_t>& a, acc_t dot) {
  return dot * a.own_slope + a.own_const;
}

template <typename acc_t>
EE_HD DistanceGrad<acc_t> distance_grad(const PointGradCoef<acc_t>& a, const PointGradCoef<acc_t>& b, acc_t d,
                                        acc_t g) {
  DistanceGrad<acc_t> r;
  r.any = d > acc_t(0) && g != acc_t(0);
  if (!r.any) return r;
  const acc_t gd = g / (acc_t(2) * d);  // dL/d(d^2)
  const acc_t dot = (a.sqnorm + b.sqnorm - d * d) / acc_t(2);
  r.aa = a.alpha;
  r.ba = a.beta;
  r.ab = b.alpha;
  r.bb = b.beta;
  r.cross = acc_t(-2) * gd;
  r.own_a = gd * own_factor(a, dot);
  r.own_b = gd * own_factor(b, dot);
  return r;
}

// emit(row, col, value) for the four cross entries of r: rows (ai, aj) of a's pair, columns (bi, bj) of b's.
template <typename acc_t, typename Emit>
EE_HD void cross_entries(int64_t ai, int64_t aj, int64_t bi, int64_t bj, const DistanceGrad<acc_t>& r, Emit&& emit) {
  emit(ai, bi, r.cross * r.aa * r.ab);
  emit(ai, bj, r.cross * r.aa * r.bb);
  emit(aj, bi, r.cross * r.ba * r.ab);
  emit(aj, bj, r.cross * r.ba * r.bb);
}

// The same gradient as its 10 entries: cross(row, col, value) for the four cross entries (rows in a's pair,
// columns in b's), then own(side, w, value) for the own entries of a (side 0) and of b (side 1), w = 0, 1, 2
// for (i, i), (i, j), (j, j) of the point's pair.
template <typename acc_t, typename Cross, typename Own>
EE_HD void distance_grad_entries(const PointRef<acc_t>& a, const PointRef<acc_t>& b, acc_t d, acc_t g, Cross&& cross,
                                 Own&& own) {
  const DistanceGrad<acc_t> r = distance_grad(a.c, b.c, d, g);
  if (!r.any) return;
  cross_entries(a.i, a.j, b.i, b.j, r, cross);
  acc_t w[3];
  own_weights<acc_t>(a.t, a.n, w[0], w[1], w[2]);
  for (int k = 0; k < 3; ++k) own(0, k, r.own_a * w[k]);
  own_weights<acc_t>(b.t, b.n, w[0], w[1], w[2]);
  for (int k = 0; k < 3; ++k) own(1, k, r.own_b * w[k]);
}

}  // namespace ee
