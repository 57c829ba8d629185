// Our CUDA kernels as MLX custom kernels, compiled by the runtime itself (jit.cpp).
//
// MLX's `fast::cuda_kernel` compiles each kernel with NVRTC in every process (it keeps its
// own kernels in its disk cache, not custom ones) and puts its whole device header ahead
// of it, which costs NVRTC 1.3-2 s a kernel: seconds before a process's first step. Here a
// kernel's source is complete in itself (CUDA's bfloat16 and half headers, then ours),
// compiles in about a tenth of a second, and is kept on disk under MLX_PTX_CACHE_DIR, so a
// later process loads it without compiling; MLX then runs the binary as a precompiled
// custom kernel.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "mlx/fast.h"
#include "mlx/mlx.h"

namespace mlxs {

// What a kernel is made of, whatever it is run on: its name (an `extern "C"` symbol), the
// names of its input and output pointers and of its int parameters, in that order, device
// code to put ahead of it, and its body.
struct KernelSpec {
  std::string name;
  std::vector<std::string> inputs;
  std::vector<std::string> outputs;
  std::vector<std::string> scalars;
  std::string header;
  std::string body;
};

// Compile-time constants of one variant: `constexpr int`, `constexpr bool` or a type alias.
using Constants = std::vector<std::pair<std::string, mlx::core::fast::TemplateArg>>;

// A GPU's compute capability as MLX reports it, major * 10 + minor (90 for Hopper); 0
// where it reports none.
int compute_capability(const mlx::core::Device& device);

// The CUDA source of `spec` for pointers of these dtypes and these constants.
std::string kernel_source(
    const KernelSpec& spec, const std::vector<mlx::core::Dtype>& input_dtypes,
    const std::vector<mlx::core::Dtype>& output_dtypes, const Constants& constants);

// NVRTC's binary (a cubin) of `source`, kernel `name`'s, for `arch` ("sm_90a"), with CUDA's
// headers from `include_dirs`. Throws with NVRTC's log where it does not compile. This and
// cached_cuda_binary exist in builds with CUDA's headers only.
std::string compile_cuda(
    const std::string& name, const std::string& source, const std::string& arch,
    const std::vector<std::string>& include_dirs);

// compile_cuda's binary from `dir` where an earlier call saved one for this source, arch
// and NVRTC (with a checksum of the binary: a damaged file is compiled again), else
// compiled and saved there through files renamed into place, so that processes sharing
// `dir` read whole files; an empty `dir` saves nothing, nor does one that cannot be
// written. `compiled` (may be null) says which it was.
std::string cached_cuda_binary(
    const std::string& name, const std::string& source, const std::string& arch,
    const std::vector<std::string>& include_dirs, const std::string& dir, bool* compiled);

// `spec` run on `stream`'s GPU over `inputs` (row-contiguous copies where they are not,
// unless `contiguous` is false), with `scalars` as its int parameters: `grid` counts
// threads, as MLX's custom kernels do. Compiled for that GPU's architecture once per
// process and variant, and loaded from the disk cache where an earlier process compiled it.
std::vector<mlx::core::array> run_kernel(
    const KernelSpec& spec, const std::vector<mlx::core::array>& inputs,
    const std::vector<mlx::core::Shape>& output_shapes,
    const std::vector<mlx::core::Dtype>& output_dtypes, const Constants& constants,
    const std::vector<int>& scalars, std::tuple<int, int, int> grid,
    std::tuple<int, int, int> threads, mlx::core::StreamOrDevice stream = {},
    bool contiguous = true);

}  // namespace mlxs
