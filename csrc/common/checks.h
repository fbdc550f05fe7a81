// Argument checks of the registered ops. The Python wrappers check first (with data-dependent checks such
// as index ranges); these guard direct calls of torch.ops.ee_cuda.* and raise ValueError / TypeError
// naming the argument, before any kernel runs.
#pragma once

#include <ATen/ATen.h>

#define EE_CHECK_TYPE(cond, ...) TORCH_CHECK_TYPE(cond, __VA_ARGS__)
#define EE_CHECK_VALUE(cond, ...) TORCH_CHECK_VALUE(cond, __VA_ARGS__)
#define EE_CHECK_SHAPE(x, ...)                                                                         \
  EE_CHECK_VALUE((x).sizes() == at::IntArrayRef({__VA_ARGS__}), #x " must have shape (" #__VA_ARGS__ "), got ", \
                 (x).sizes())
#define EE_CHECK_DEVICE(x, ref) \
  EE_CHECK_VALUE((x).device() == (ref).device(), #x " is on ", (x).device(), " but X is on ", (ref).device())

namespace ee {

inline void check_embeddings(const at::Tensor& X, const char* name = "X") {
  EE_CHECK_VALUE(X.dim() == 2, name, " must have shape (B, D), got ", X.sizes());
  EE_CHECK_TYPE(at::isFloatingType(X.scalar_type()), name, " must be a floating tensor, got ", X.scalar_type());
}

// `pairs` (named `name`) indexes the rows of X (named `of`).
inline void check_pairs(const at::Tensor& pairs, const at::Tensor& X, const char* name = "pairs",
                        const char* of = "X") {
  EE_CHECK_TYPE(pairs.scalar_type() == at::kLong, name, " must be an int64 tensor, got ", pairs.scalar_type());
  EE_CHECK_VALUE(pairs.dim() == 2 && pairs.size(1) == 2, name, " must have shape (P, 2), got ", pairs.sizes());
  EE_CHECK_VALUE(pairs.device() == X.device(), name, " is on ", pairs.device(), " but X is on ", X.device());
  // The CUDA kernels read no index on the host; they only guard rows against B, which needs B > 0.
  EE_CHECK_VALUE(X.size(0) > 0 || pairs.size(0) == 0, name, " has ", pairs.size(0), " rows but ", of, " has no rows");
}

// The CPU kernels read pair values on the host before any kernel runs (free there; on the GPU it would
// synchronize, so the CUDA kernels guard rows instead). Same checks, order and messages as the Python
// wrappers' (ee_cuda/_validation.py), which leave them to this one pass on the CPU: every row in [0, B),
// then no row pairing a sample with itself, then (given labels) every pair within one label.
inline void check_pair_values_on_cpu(const at::Tensor& pairs, int64_t B, const at::Tensor& labels = at::Tensor(),
                                     const char* name = "pairs", const char* labels_name = "labels") {
  const int64_t P = pairs.size(0);
  if (P == 0) return;
  const at::Tensor pc = pairs.contiguous();
  const int64_t* pr = pc.data_ptr<int64_t>();
  for (int64_t r = 0; r < P; ++r)
    EE_CHECK_VALUE(pr[2 * r] >= 0 && pr[2 * r] < B && pr[2 * r + 1] >= 0 && pr[2 * r + 1] < B,
                   name, " holds indices outside [0, B=", B, "): row ", r, " is [", pr[2 * r], ", ", pr[2 * r + 1],
                   "]");
  for (int64_t r = 0; r < P; ++r)
    EE_CHECK_VALUE(pr[2 * r] != pr[2 * r + 1], name, " row ", r, " pairs a sample with itself: [", pr[2 * r], ", ",
                   pr[2 * r + 1], "] (need i != j)");
  if (!labels.defined()) return;
  const at::Tensor lc = labels.contiguous();
  const int64_t* lab = lc.data_ptr<int64_t>();
  for (int64_t r = 0; r < P; ++r) {
    const int64_t i = pr[2 * r], j = pr[2 * r + 1];
    EE_CHECK_VALUE(lab[i] == lab[j], name, " row ", r, " = (", i, ", ", j, ") is not a positive pair: ", labels_name,
                   "[", i, "]=", lab[i], " != ", labels_name, "[", j, "]=", lab[j]);
  }
}

inline void check_n_inner(int64_t n_inner) { EE_CHECK_VALUE(n_inner >= 0, "n_inner must be >= 0, got ", n_inner); }

inline void check_search_inputs(const at::Tensor& X, const at::Tensor& pairs, const at::Tensor& labels,
                                int64_t n_inner) {
  check_embeddings(X);
  check_pairs(pairs, X);
  check_n_inner(n_inner);
  EE_CHECK_TYPE(labels.scalar_type() == at::kLong, "labels must be an int64 tensor, got ", labels.scalar_type());
  EE_CHECK_SHAPE(labels, X.size(0));
  EE_CHECK_DEVICE(labels, X);
}

// A search's reference set: ref_X of X's width, dtype and device, ref_pairs into its rows, and (given)
// ref_labels, one per row.
inline void check_reference_inputs(const at::Tensor& X, const at::Tensor& ref_X, const at::Tensor& ref_pairs,
                                   const at::Tensor& ref_labels = at::Tensor()) {
  check_embeddings(ref_X, "ref_X");
  EE_CHECK_VALUE(ref_X.size(1) == X.size(1), "ref_X has D=", ref_X.size(1), " columns but X has D=", X.size(1),
                 "; they must match");
  EE_CHECK_TYPE(ref_X.scalar_type() == X.scalar_type(), "ref_X is ", ref_X.scalar_type(), " but X is ",
                X.scalar_type(), "; they must match");
  EE_CHECK_VALUE(ref_X.device() == X.device(), "ref_X is on ", ref_X.device(), " but X is on ", X.device());
  check_pairs(ref_pairs, ref_X, "ref_pairs", "ref_X");
  if (!ref_labels.defined()) return;
  EE_CHECK_TYPE(ref_labels.scalar_type() == at::kLong, "ref_labels must be an int64 tensor, got ",
                ref_labels.scalar_type());
  EE_CHECK_VALUE(ref_labels.dim() == 1 && ref_labels.size(0) == ref_X.size(0), "ref_labels must have shape (",
                 ref_X.size(0), ",), got ", ref_labels.sizes());
  EE_CHECK_VALUE(ref_labels.device() == X.device(), "ref_labels is on ", ref_labels.device(), " but X is on ",
                 X.device());
}

inline void check_expand_backward_inputs(const at::Tensor& grad, const at::Tensor& X, const at::Tensor& pairs,
                                         int64_t n_inner) {
  check_embeddings(X);
  check_pairs(pairs, X);
  check_n_inner(n_inner);
  const int64_t P = pairs.size(0), D = X.size(1);
  EE_CHECK_VALUE(grad.sizes() == at::IntArrayRef({P, n_inner, D}), "grad must have shape (P, n_inner, D) = (", P,
                 ", ", n_inner, ", ", D, "), got ", grad.sizes());
  EE_CHECK_DEVICE(grad, X);
}

// Saved forward outputs handed to a search backward: grad/dist of `out_shape`, index of out_shape + (2,).
inline void check_search_backward_inputs(const at::Tensor& grad, const at::Tensor& X, const at::Tensor& pairs,
                                         const at::Tensor& dist, const at::Tensor& index, int64_t n_inner,
                                         at::IntArrayRef out_shape) {
  check_embeddings(X);
  check_pairs(pairs, X);
  check_n_inner(n_inner);
  EE_CHECK_VALUE(grad.sizes() == out_shape, "grad must have shape ", out_shape, ", got ", grad.sizes());
  EE_CHECK_VALUE(dist.sizes() == out_shape, "dist must have shape ", out_shape, ", got ", dist.sizes());
  EE_CHECK_TYPE(index.scalar_type() == at::kLong, "index must be an int64 tensor, got ", index.scalar_type());
  EE_CHECK_VALUE(index.dim() == int64_t(out_shape.size()) + 1 &&
                     index.sizes().slice(0, out_shape.size()) == out_shape && index.size(-1) == 2,
                 "index must have shape ", out_shape, " + (2,), got ", index.sizes());
  EE_CHECK_DEVICE(grad, X);
  EE_CHECK_DEVICE(dist, X);
  EE_CHECK_DEVICE(index, X);
}

// The accumulation type: float for half, bfloat16 and float; double for double.
inline at::ScalarType acc_type_of(const at::Tensor& X) {
  return X.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
}

}  // namespace ee
