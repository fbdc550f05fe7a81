// CPU kernels of expand (docs/design.md §2): synthetic points u / max(||u||, eps) and their backward, which
// stores no per-point gradient: pass 1 computes ||u|| and s = <a, grad> per point; pass 2 adds grad_u to both
// endpoints, in column chunks owned by one task each.
#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>

#include "../common/checks.h"
#include "../common/ee_math.h"
#include "point_coef_cpu.h"

namespace ee {
namespace {

using at::Tensor;

Tensor expand_cpu(const Tensor& X_, const Tensor& pairs_, int64_t n, bool normalize) {
  check_embeddings(X_);
  check_pairs(pairs_, X_);
  check_n_inner(n);
  const Tensor pairs = pairs_.contiguous();
  check_pair_values_on_cpu(pairs, X_.size(0));
  const int64_t P = pairs.size(0), D = X_.size(1);
  Tensor out = at::empty({P, n, D}, X_.options());
  if (out.numel() == 0) return out;
  const Tensor X = X_.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, X.scalar_type(), "expand_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Tensor Xa = X.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const acc_t* x = Xa.data_ptr<acc_t>();
    const int64_t* pr = pairs.data_ptr<int64_t>();
    scalar_t* y = out.data_ptr<scalar_t>();
    at::parallel_for(0, P, 4, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const acc_t *xi = x + pr[2 * p] * D, *xj = x + pr[2 * p + 1] * D;
        synthetic_sqnorms(xi, xj, D, n, [&](int64_t t, acc_t sq) {
          const acc_t den = normalize_denominator(std::sqrt(sq), normalize);
          scalar_t* yt = y + (p * n + t - 1) * D;
          for (int64_t d = 0; d < D; ++d) yt[d] = scalar_t(interpolate(xi[d], xj[d], t, n) / den);
        });
      }
    });
  });
  return out;
}

Tensor expand_backward_cpu(const Tensor& grad_, const Tensor& X_, const Tensor& pairs_, int64_t n, bool normalize) {
  check_expand_backward_inputs(grad_, X_, pairs_, n);
  const int64_t P = pairs_.size(0), B = X_.size(0), D = X_.size(1);
  const Tensor pairs = pairs_.contiguous();
  check_pair_values_on_cpu(pairs, B);
  if (grad_.numel() == 0) return at::zeros_like(X_);
  const at::ScalarType acc = acc_type_of(X_);
  const Tensor X = X_.to(acc).contiguous(), grad = grad_.to(acc).contiguous();
  Tensor dX = at::zeros({B, D}, X.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "expand_backward_cpu", [&] {
    using acc_t = scalar_t;
    const acc_t* x = X.data_ptr<acc_t>();
    const acc_t* g = grad.data_ptr<acc_t>();
    const int64_t* pr = pairs.data_ptr<int64_t>();
    // Pass 1: per synthetic point, ||u|| and s = <u / ||u||, grad> (the projection of F.normalize).
    Tensor unorm_t = at::empty({P, n}, X.options()), s_t = at::empty({P, n}, X.options());
    acc_t* unorm = unorm_t.data_ptr<acc_t>();
    acc_t* s = s_t.data_ptr<acc_t>();
    at::parallel_for(0, P, 4, [&](int64_t begin, int64_t end) {
      for (int64_t p = begin; p < end; ++p) {
        const acc_t *xi = x + pr[2 * p] * D, *xj = x + pr[2 * p + 1] * D;
        synthetic_sqnorms(xi, xj, D, n, [&](int64_t t, acc_t sq) {
          const acc_t un = std::sqrt(sq);
          const acc_t* gt = g + (p * n + t - 1) * D;
          acc_t dot = 0;
          for (int64_t d = 0; d < D; ++d) dot += interpolate(xi[d], xj[d], t, n) * gt[d];
          unorm[p * n + t - 1] = un;
          s[p * n + t - 1] = un > acc_t(0) ? dot / un : acc_t(0);
        });
      }
    });
    // Pass 2: grad_u = (g - a s) / ||u|| (or g / eps below eps, or g unnormalized), into both endpoints.
    constexpr int64_t kChunk = 64;
    acc_t* y = dX.data_ptr<acc_t>();
    at::parallel_for(0, (D + kChunk - 1) / kChunk, 1, [&](int64_t begin, int64_t end) {
      const int64_t d0 = begin * kChunk, d1 = std::min(D, end * kChunk);
      for (int64_t p = 0; p < P; ++p) {
        const int64_t i = pr[2 * p], j = pr[2 * p + 1];
        for (int64_t t = 1; t <= n; ++t) {
          const int64_t pt = p * n + t - 1;
          const acc_t un = unorm[pt];
          const acc_t den = normalize_denominator(un, normalize), proj = normalize_projection(s[pt], un, normalize);
          const acc_t wi = weight_i<acc_t>(t, n), wj = weight_j<acc_t>(t, n);
          const acc_t* gt = g + pt * D;
          for (int64_t d = d0; d < d1; ++d) {
            const acc_t u = interpolate(x[i * D + d], x[j * D + d], t, n);
            const acc_t gu = (gt[d] - u * proj) / den;
            y[i * D + d] += wi * gu;
            y[j * D + d] += wj * gu;
          }
        }
      }
    });
  });
  return dX.to(X_.scalar_type());
}

}  // namespace

TORCH_LIBRARY_IMPL(ee_cuda, CPU, m) {
  m.impl("expand", &expand_cpu);
  m.impl("expand_backward", &expand_backward_cpu);
}

}  // namespace ee
