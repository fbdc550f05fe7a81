// CPU forward of hard_negative_pairs / hard_negative_points, within a batch and against a reference set
// (docs/design.md §3-§4): the Gram matrix (gram_cpu.h), the points' PointCoef table (point_coef_cpu.h), then
// the vectorized row path (search_rows_cpu.h) where every endpoint is finite and the keys fit the lanes, else
// the tile path that the CUDA kernels run (search_tiles_cpu.h), which ranks NaN as torch.min propagates it.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <optional>

#include "../common/checks.h"
#include "../common/reference_inputs.h"
#include "gram_cpu.h"
#include "search_rows_cpu.h"
#include "search_tiles_cpu.h"

namespace ee {
namespace {

using at::Tensor;

struct Side {  // embeddings (contiguous, in the accumulation type), pairs and labels (contiguous)
  Tensor X, pairs, labels;
};

// dist and index of a search of the query pairs against `ref` (nullptr: within the batch). gram: query rows x
// reference rows; within a batch, `lower_missing` says its lower triangle is still to be mirrored.
template <bool kPoints, typename acc_t>
void search(const Tensor& gram, bool lower_missing, const Side& query, const Side* ref, int64_t n, bool normalize,
            acc_t* dist, int64_t* index) {
  const Side& other = ref ? *ref : query;
  const int64_t T = n + 2, ld = other.X.size(0);  // ld: the Gram's row stride
  acc_t* g = gram.data_ptr<acc_t>();
  if (!cpu_routes().tiles && row_keys_fit<acc_t>(other.pairs.size(0), T, kPoints)) {
    const PairBlocks<acc_t> query_blocks(query.X, query.pairs, query.labels, n, normalize);
    std::optional<PairBlocks<acc_t>> ref_own_blocks;
    if (ref) ref_own_blocks.emplace(other.X, other.pairs, other.labels, n, normalize);
    const PairBlocks<acc_t>& ref_blocks = ref ? *ref_own_blocks : query_blocks;
    if (query_blocks.endpoints_finite() && ref_blocks.endpoints_finite()) {
      const bool upper_only = !kPoints && !ref && pairs_ascending(query.pairs);
      if (lower_missing && !upper_only) mirror_in_place(g, ld, false);
      kPoints ? point_rows_cpu(query_blocks, ref_blocks, g, ld, dist, index)
              : pair_rows_cpu(query_blocks, ref_blocks, g, ld, upper_only, dist, index);
      return;
    }
  }
  if (lower_missing) mirror_in_place(g, ld, false);
  const Tensor query_coef = coef_table_cpu<acc_t>(query.X, query.pairs, n, normalize);
  const TileSet<acc_t> query_set(query_coef, query.pairs, query.labels, query.X.size(0));
  const TileSet<acc_t> ref_set(ref ? coef_table_cpu<acc_t>(other.X, other.pairs, n, normalize) : query_coef,
                               other.pairs, other.labels, ld);
  const SearchArgs<acc_t> args{g, query_set.view(), ref_set.view(), T, ref == nullptr};
  kPoints ? run_point_tiles(args, dist, index) : run_pair_tiles(args, dist, index);
}

template <bool kPoints>
std::tuple<Tensor, Tensor> search_cpu(const Tensor& X_, const Tensor& pairs_, const Tensor& labels_, int64_t n,
                                      bool normalize) {
  check_search_inputs(X_, pairs_, labels_, n);
  const Side query{X_.to(acc_type_of(X_)).contiguous(), pairs_.contiguous(), labels_.contiguous()};
  check_pair_values_on_cpu(query.pairs, X_.size(0), query.labels);
  const int64_t P = query.pairs.size(0), cols = kPoints ? n + 2 : P;
  // dist in the accumulation type (float for half inputs): the backward reads it, and the public op rounds it.
  Tensor dist = at::empty({P, cols}, query.X.options());
  Tensor index = at::empty({P, cols, 2}, query.pairs.options());
  if (P == 0) return {dist, index};
  bool lower_missing = false;
  const Tensor gram = gram_cpu(query.X, lower_missing);
  AT_DISPATCH_FLOATING_TYPES(query.X.scalar_type(), "hard_negative_search_cpu", [&] {
    search<kPoints>(gram, lower_missing, query, nullptr, n, normalize, dist.data_ptr<scalar_t>(),
                    index.data_ptr<int64_t>());
  });
  return {dist, index};
}

template <bool kPoints>
std::tuple<Tensor, Tensor> search_reference_cpu(const Tensor& X, const Tensor& pairs, const Tensor& labels,
                                                 const Tensor& ref_X, const Tensor& ref_pairs,
                                                 const Tensor& ref_labels, int64_t n, bool normalize) {
  const ReferenceForward in = reference_forward_inputs(X, pairs, labels, ref_X, ref_pairs, ref_labels, n, kPoints);
  if (in.empty) return {in.dist, in.index};
  const Side query{in.X, in.pairs, in.labels}, ref{in.Y, in.ref_pairs, in.ref_labels};
  AT_DISPATCH_FLOATING_TYPES(in.X.scalar_type(), "hard_negative_search_reference_cpu", [&] {
    search<kPoints>(in.gram, false, query, &ref, n, normalize, in.dist.data_ptr<scalar_t>(),
                    in.index.data_ptr<int64_t>());
  });
  return {in.dist, in.index};
}

}  // namespace

TORCH_LIBRARY_IMPL(ee_cuda, CPU, m) {
  m.impl("hard_negative_pairs", &search_cpu<false>);
  m.impl("hard_negative_points", &search_cpu<true>);
  m.impl("hard_negative_pairs_ref", &search_reference_cpu<false>);
  m.impl("hard_negative_points_ref", &search_reference_cpu<true>);
}

}  // namespace ee
