// Device memory for code outside libmlx: see device_memory.h.

#include "device_memory.h"
#include "cuda_library.h"
#include "jit.h"

#include <cuda.h>

#include <stdexcept>
#include <string>

#include "mlx/backend/cuda/device.h"
#include "mlx/backend/cuda/utils.h"

namespace mx = mlx::core;

namespace mlxs {
namespace {

// The CUDA driver's entry points this file calls. The driver rather than the runtime:
// libmlx.so links CUDA's runtime statically and the driver dynamically, so the driver is
// the copy MLX itself runs on.
struct Driver {
  decltype(&cuMemcpyHtoD_v2) memcpy;
  decltype(&cuStreamSynchronize) synchronize;
  decltype(&cuGetErrorString) error_string;
};

const Driver& driver() {
  static const Driver driver = [] {
    CudaLibrary lib("libcuda.so.1", "device_copy");
    Driver d;
    lib.bind(d.memcpy, "cuMemcpyHtoD_v2");
    lib.bind(d.synchronize, "cuStreamSynchronize");
    lib.bind(d.error_string, "cuGetErrorString");
    return d;
  }();
  return driver;
}

void check(CUresult status, const char* what, const mx::array& a) {
  if (status != CUDA_SUCCESS) {
    const char* why = "unknown error";
    driver().error_string(status, &why);
    throw std::runtime_error(
        std::string("[device_copy] ") + what + " of " + std::to_string(a.nbytes()) +
        " bytes failed: " + why);
  }
}

}  // namespace

std::vector<mx::array> device_arrays(
    const std::vector<mx::Shape>& shapes, const std::vector<mx::Dtype>& dtypes,
    const std::vector<mx::array>& after, mx::Stream stream) {
  std::vector<std::string> inputs, outputs;
  for (size_t i = 0; i < after.size(); ++i) {
    inputs.push_back("in" + std::to_string(i));
  }
  for (size_t i = 0; i < shapes.size(); ++i) {
    outputs.push_back("out" + std::to_string(i));
  }
  KernelSpec spec{"mlxs_device_arrays", inputs, outputs, {}, "", ""};
  return run_kernel(spec, after, shapes, dtypes, {}, {}, {1, 1, 1}, {1, 1, 1}, stream, false);
}

mx::array device_copy(
    const void* data, const mx::Shape& shape, mx::Dtype dtype, mx::Stream stream) {
  mx::array out = device_arrays({shape}, {dtype}, {}, stream)[0];
  mx::eval(out);
  // The buffer is allocated in the stream's order; the copy below runs on CUDA's legacy
  // stream, which MLX's streams do not wait on. mx::eval made MLX's context current.
  mx::synchronize(stream);
  if (out.nbytes() > 0) {
    auto to = reinterpret_cast<CUdeviceptr>(mx::gpu_ptr<void>(out));
    check(driver().memcpy(to, data, out.nbytes()), "cuMemcpyHtoD", out);
    // From pageable memory the call returns once the bytes are staged, not yet written.
    check(driver().synchronize(nullptr), "cuStreamSynchronize after cuMemcpyHtoD", out);
  }
  return out;
}

}  // namespace mlxs
