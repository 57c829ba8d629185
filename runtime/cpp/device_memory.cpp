// Device memory for code outside libmlx: see device_memory.h.

#include "device_memory.h"
#include "cuda_library.h"

#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

#include "mlx/backend/cuda/device.h"
#include "mlx/backend/cuda/utils.h"
#include "mlx/fast.h"

namespace mx = mlx::core;

namespace mlxs {
namespace {

// The CUDA runtime entry points this file calls.
struct Cudart {
  decltype(&cudaMemcpy) memcpy;
  decltype(&cudaStreamSynchronize) synchronize;
  decltype(&cudaGetErrorString) error_string;
};

const Cudart& cudart() {
  static const Cudart cudart = [] {
    CudaLibrary lib("libcudart.so.13", "device_copy");
    Cudart c;
    lib.bind(c.memcpy, "cudaMemcpy");
    lib.bind(c.synchronize, "cudaStreamSynchronize");
    lib.bind(c.error_string, "cudaGetErrorString");
    return c;
  }();
  return cudart;
}

void check(cudaError_t status, const char* what, const mx::array& a) {
  if (status != cudaSuccess) {
    throw std::runtime_error(
        std::string("[device_copy] ") + what + " of " + std::to_string(a.nbytes()) +
        " bytes failed: " + cudart().error_string(status));
  }
}

}  // namespace

std::vector<mx::array> device_arrays(
    const std::vector<mx::Shape>& shapes, const std::vector<mx::Dtype>& dtypes,
    const std::vector<mx::array>& after, mx::Stream stream) {
  // Kernels are cached by name: one per signature.
  std::vector<std::string> inputs, outputs;
  for (size_t i = 0; i < after.size(); ++i) {
    inputs.push_back("in" + std::to_string(i));
  }
  for (size_t i = 0; i < shapes.size(); ++i) {
    outputs.push_back("out" + std::to_string(i));
  }
  auto kernel = mx::fast::cuda_kernel(
      "mlxs_device_arrays_" + std::to_string(inputs.size()) + "_" +
          std::to_string(outputs.size()),
      inputs, outputs, "", "", false);
  return kernel(after, shapes, dtypes, {1, 1, 1}, {1, 1, 1}, {}, std::nullopt, false, stream);
}

mx::array device_copy(
    const void* data, const mx::Shape& shape, mx::Dtype dtype, mx::Stream stream) {
  mx::array out = device_arrays({shape}, {dtype}, {}, stream)[0];
  mx::eval(out);
  // The buffer is allocated in the stream's order; the copy below runs on CUDA's legacy
  // stream, which MLX's streams do not wait on.
  mx::synchronize(stream);
  if (out.nbytes() > 0) {
    check(
        cudart().memcpy(mx::gpu_ptr<void>(out), data, out.nbytes(), cudaMemcpyDefault),
        "cudaMemcpy", out);
    // From pageable memory the call returns once the bytes are staged, not yet written.
    check(cudart().synchronize(nullptr), "cudaStreamSynchronize after cudaMemcpy", out);
  }
  return out;
}

}  // namespace mlxs
