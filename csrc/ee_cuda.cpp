// The ee_cuda operator library: every schema in one place (kernels register per device in cpu/ and cuda/),
// and the Python module ee_cuda._C, whose import loads them.
#include <torch/extension.h>
#include <torch/library.h>

#include <limits>
#include <optional>
#include <string>

#include "cpu/routes_cpu.h"

#ifndef EE_CUDA_ARCH_LIST
#define EE_CUDA_ARCH_LIST ""
#endif

TORCH_LIBRARY(ee_cuda, m) {
  m.def("expand(Tensor X, Tensor pairs, int n_inner, bool normalize) -> Tensor");
  m.def("expand_backward(Tensor grad, Tensor X, Tensor pairs, int n_inner, bool normalize) -> Tensor");
  m.def("hard_negative_pairs(Tensor X, Tensor pairs, Tensor labels, int n_inner, bool normalize) -> (Tensor, Tensor)");
  m.def(
      "hard_negative_pairs_backward(Tensor grad, Tensor X, Tensor pairs, Tensor dist, Tensor index, int n_inner, "
      "bool normalize) -> Tensor");
  m.def("hard_negative_points(Tensor X, Tensor pairs, Tensor labels, int n_inner, bool normalize) -> (Tensor, Tensor)");
  m.def(
      "hard_negative_points_backward(Tensor grad, Tensor X, Tensor pairs, Tensor dist, Tensor index, int n_inner, "
      "bool normalize) -> Tensor");
  // With a reference set (docs/design.md §3): the candidates are the augmented points of (ref_X, ref_pairs).
  m.def(
      "hard_negative_pairs_ref(Tensor X, Tensor pairs, Tensor labels, Tensor ref_X, Tensor ref_pairs, "
      "Tensor ref_labels, int n_inner, bool normalize) -> (Tensor, Tensor)");
  // The backward ops return (dX, dref_X); dref_X is (0, D) when ref_grad is false (a detached memory bank).
  m.def(
      "hard_negative_pairs_ref_backward(Tensor grad, Tensor X, Tensor pairs, Tensor ref_X, Tensor ref_pairs, "
      "Tensor dist, Tensor index, int n_inner, bool normalize, bool ref_grad) -> (Tensor, Tensor)");
  m.def(
      "hard_negative_points_ref(Tensor X, Tensor pairs, Tensor labels, Tensor ref_X, Tensor ref_pairs, "
      "Tensor ref_labels, int n_inner, bool normalize) -> (Tensor, Tensor)");
  m.def(
      "hard_negative_points_ref_backward(Tensor grad, Tensor X, Tensor pairs, Tensor ref_X, Tensor ref_pairs, "
      "Tensor dist, Tensor index, int n_inner, bool normalize, bool ref_grad) -> (Tensor, Tensor)");
}

namespace {

pybind11::dict build_info() {
  pybind11::dict info;
  info["cpu"] = true;
#ifdef _OPENMP
  info["openmp"] = true;  // the CPU kernels' at::parallel_for runs on torch's intra-op threads
#else
  info["openmp"] = false;
#endif
  // Which copy of the CPU's vectorized loops runs (simd_cpu.h): chosen at run time, not at build time.
  info["cpu_vector_isa"] = ee::cpu_routes().avx2 ? "avx2" : "baseline";
#ifdef EE_WITH_CUDA
  info["cuda"] = true;
  info["cuda_arch_list"] = std::string(EE_CUDA_ARCH_LIST);
#else
  info["cuda"] = false;
  info["cuda_arch_list"] = pybind11::none();
#endif
  return info;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Fused Embedding Expansion kernels; the ops live in torch.ops.ee_cuda";
  m.def("build_info", &build_info, "Which fused kernels this build contains");
  m.def(
      "_set_cpu_routes",
      [](bool tiles, bool scatter, std::optional<bool> avx2, std::optional<int64_t> key_limit) {
        TORCH_CHECK_VALUE(!avx2.value_or(false) || ee::cpu_has_avx2(), "avx2=True on a CPU without AVX2");
        TORCH_CHECK_VALUE(key_limit.value_or(0) >= 0, "key_limit must be >= 0, got ", key_limit.value_or(0));
        ee::cpu_routes().tiles = tiles;
        ee::cpu_routes().scatter = scatter;
        ee::cpu_routes().avx2 = avx2.value_or(ee::CpuRoutes::default_avx2());
        ee::cpu_routes().key_limit = key_limit.value_or(std::numeric_limits<int32_t>::max());
      },
      pybind11::arg("tiles"), pybind11::arg("scatter"), pybind11::arg("avx2") = pybind11::none(),
      pybind11::arg("key_limit") = pybind11::none(),
      "Tests only: every CPU search on the CUDA kernels' tiles (tiles=True), the searches' backward as the CUDA "
      "kernels' per-output scatter run serially (scatter=True), the ISA of the vectorized loops (None: AVX2 where "
      "the CPU has it and ATEN_CPU_CAPABILITY allows it) and the largest key of the row path's lanes (None: the "
      "int32 maximum; smaller sends larger searches to the tiles)");
}
