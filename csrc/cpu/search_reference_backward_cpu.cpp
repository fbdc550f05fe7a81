// CPU backward of hard_negative_pairs / hard_negative_points against a reference set (docs/design.md §5): the
// outputs' cross entries gathered into a dense dG (B x R, search_backward_cpu.h), then dX = dG ref_X and
// dref_X = dG^T X (skipped without a gradient to ref_X), plus each side's own entries in D-space.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../common/reference_inputs.h"
#include "search_backward_cpu.h"

namespace ee {
namespace {

using at::Tensor;

template <bool kPoints>
std::tuple<Tensor, Tensor> search_reference_backward_cpu(const Tensor& grad, const Tensor& X_, const Tensor& pairs,
                                                         const Tensor& ref_X_, const Tensor& ref_pairs,
                                                         const Tensor& dist, const Tensor& index, int64_t n,
                                                         bool normalize, bool ref_grad) {
  const ReferenceBackward in = reference_backward_inputs(grad, X_, pairs, ref_X_, ref_pairs, dist, index, n, kPoints);
  Tensor dX, dY;
  if (in.empty) return reference_gradients(X_, ref_X_, dX, dY, ref_grad);
  const Tensor &X = in.X, &Y = in.Y;
  Tensor dG = at::zeros({X.size(0), Y.size(0)}, X.options());
  AT_DISPATCH_FLOATING_TYPES(X.scalar_type(), "hard_negative_search_reference_backward_cpu", [&] {
    using acc_t = scalar_t;
    const GradSide<acc_t> query(X, in.pairs, n, normalize), ref(Y, in.ref_pairs, n, normalize);
    std::vector<acc_t> own, ref_own;
    gather_gradient<kPoints>(query, ref, in, n, dG, own, ref_own);
    dX = at::mm(dG, Y);
    add_own_entries(dX.data_ptr<acc_t>(), X, in.pairs, own, n);
    if (!ref_grad) return;
    dY = at::mm(dG.t(), X);
    add_own_entries(dY.data_ptr<acc_t>(), Y, in.ref_pairs, ref_own, n);
  });
  return reference_gradients(X_, ref_X_, dX, dY, ref_grad);
}

}  // namespace

TORCH_LIBRARY_IMPL(ee_cuda, CPU, m) {
  m.impl("hard_negative_pairs_ref_backward", &search_reference_backward_cpu<false>);
  m.impl("hard_negative_points_ref_backward", &search_reference_backward_cpu<true>);
}

}  // namespace ee
