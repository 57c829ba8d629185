// Device memory for code outside libmlx (device_memory.cpp; CUDA builds only).
//
// A primitive of ours reaches MLX's CUDA allocator only through `allocator::malloc`, which
// serves managed memory (and turns a cached device buffer into managed memory with a
// synchronous copy); the device path, `cu::malloc_async`, is not exported from libmlx. MLX
// allocates a custom kernel's outputs in device memory, so a kernel that writes nothing
// takes them for us.
#pragma once

#include <vector>

#include "mlx/mlx.h"

namespace mlxs {

// Arrays of `shapes` and `dtypes` in device memory, unwritten, allocated on `stream` once
// `after` (may be empty) is computed.
std::vector<mlx::core::array> device_arrays(
    const std::vector<mlx::core::Shape>& shapes, const std::vector<mlx::core::Dtype>& dtypes,
    const std::vector<mlx::core::array>& after, mlx::core::Stream stream);

// An evaluated array in the memory of `stream`'s GPU holding a copy of `data` (row-major
// bytes of `shape` and `dtype`), copied before it returns; it evaluates, so callers hold
// the runtime's eval lock. What a checkpoint's tensors become on a GPU: MLX's own
// `array(data, ...)` copies them on one CPU thread into managed memory, which the host
// fills by page faults (about 1.4 GB/s on an H200's host) and the GPU migrates by page
// faults again at first use.
mlx::core::array device_copy(
    const void* data, const mlx::core::Shape& shape, mlx::core::Dtype dtype,
    mlx::core::Stream stream);

}  // namespace mlxs
