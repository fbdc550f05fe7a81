// What the searches against a reference set start from on either device (and the CPU's in-batch backwards, a
// batch being its own reference): the arguments checked (pair values too on the CPU, where reading them is
// free), made contiguous and converted to the accumulation type.
#pragma once

#include <ATen/ATen.h>

#include <cmath>
#include <tuple>
#include <vector>

#include "checks.h"

namespace ee {

struct ReferenceForward {
  at::Tensor pairs, labels, ref_pairs, ref_labels;
  at::Tensor X, Y, gram;  // X, ref_X and X ref_X^T in the accumulation type; undefined when `empty`
  at::Tensor dist, index;  // the outputs: dist (P, T or Q) in the accumulation type, index (..., 2)
  bool empty;              // no query or no reference pair: dist is +inf and index -1 already
};

inline ReferenceForward reference_forward_inputs(const at::Tensor& X_, const at::Tensor& pairs_,
                                                 const at::Tensor& labels_, const at::Tensor& ref_X_,
                                                 const at::Tensor& ref_pairs_, const at::Tensor& ref_labels_,
                                                 int64_t n, bool points) {
  check_search_inputs(X_, pairs_, labels_, n);
  check_reference_inputs(X_, ref_X_, ref_pairs_, ref_labels_);
  ReferenceForward in;
  in.pairs = pairs_.contiguous();
  in.labels = labels_.contiguous();
  in.ref_pairs = ref_pairs_.contiguous();
  in.ref_labels = ref_labels_.contiguous();
  if (X_.is_cpu()) {
    check_pair_values_on_cpu(in.pairs, X_.size(0), in.labels);
    check_pair_values_on_cpu(in.ref_pairs, ref_X_.size(0), in.ref_labels, "ref_pairs", "ref_labels");
  }
  const int64_t P = in.pairs.size(0), Q = in.ref_pairs.size(0), cols = points ? n + 2 : Q;
  in.dist = at::empty({P, cols}, X_.options().dtype(acc_type_of(X_)));
  in.index = at::empty({P, cols, 2}, in.pairs.options());
  in.empty = P == 0 || Q == 0;
  if (in.empty) {
    in.dist.fill_(INFINITY);
    in.index.fill_(-1);
    return in;
  }
  in.X = X_.to(acc_type_of(X_)).contiguous();
  in.Y = ref_X_.to(acc_type_of(X_)).contiguous();
  in.gram = at::mm(in.X, in.Y.t());
  return in;
}

struct ReferenceBackward {
  at::Tensor pairs, ref_pairs, index;
  at::Tensor X, Y, grad, dist;  // in the accumulation type; undefined when `empty`
  bool empty;                   // no output or no column: both gradients are zero
};

inline ReferenceBackward reference_backward_inputs(const at::Tensor& grad_, const at::Tensor& X_,
                                                   const at::Tensor& pairs_, const at::Tensor& ref_X_,
                                                   const at::Tensor& ref_pairs_, const at::Tensor& dist_,
                                                   const at::Tensor& index_, int64_t n, bool points) {
  const int64_t P = pairs_.size(0), Q = ref_pairs_.size(0);
  check_search_backward_inputs(grad_, X_, pairs_, dist_, index_, n, std::vector<int64_t>{P, points ? n + 2 : Q});
  check_reference_inputs(X_, ref_X_, ref_pairs_);
  ReferenceBackward in;
  in.pairs = pairs_.contiguous();
  in.ref_pairs = ref_pairs_.contiguous();
  in.index = index_.contiguous();
  if (X_.is_cpu()) {
    check_pair_values_on_cpu(in.pairs, X_.size(0));
    check_pair_values_on_cpu(in.ref_pairs, ref_X_.size(0), at::Tensor(), "ref_pairs");
  }
  in.empty = P == 0 || Q == 0 || X_.size(1) == 0;
  if (in.empty) return in;
  const at::ScalarType acc = acc_type_of(X_);
  in.X = X_.to(acc).contiguous();
  in.Y = ref_X_.to(acc).contiguous();
  in.grad = grad_.to(acc).contiguous();
  in.dist = dist_.to(acc).contiguous();
  return in;
}

// The backward ops' outputs in the inputs' dtype: (dX, dref_X), dref_X (0, D) when ref_grad is false;
// undefined gradients (an empty backward) are zeros.
inline std::tuple<at::Tensor, at::Tensor> reference_gradients(const at::Tensor& X_, const at::Tensor& ref_X_,
                                                              const at::Tensor& dX, const at::Tensor& dY,
                                                              bool ref_grad) {
  const at::Tensor gX = dX.defined() ? dX.to(X_.scalar_type()) : at::zeros_like(X_);
  if (!ref_grad) return {gX, ref_X_.new_empty({0, ref_X_.size(1)})};
  return {gX, dY.defined() ? dY.to(X_.scalar_type()) : at::zeros_like(ref_X_)};
}

}  // namespace ee
