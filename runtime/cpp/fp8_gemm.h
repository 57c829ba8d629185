// FP8 matrix products on CUDA GPUs through cuBLASLt (fp8_gemm.cpp; CUDA builds only).
#pragma once

#include <optional>

#include "mlx/mlx.h"

namespace mlxs {

// x[M, K] · w[N, K]ᵀ for uint8 arrays holding E4M3, accumulated in float32 and written in
// `out` (float16, bfloat16 or float32); K and N must be multiples of 16. nullopt where
// cuBLASLt has no kernel for the product on the GPU.
std::optional<mlx::core::array> fp8_gemm(
    const mlx::core::array& x, const mlx::core::array& w, mlx::core::Dtype out,
    mlx::core::Stream stream);

// The same product, row i and column j times x_scale[i] and w_scale[j] (x_scale [M] and
// w_scale [N], float32) in cuBLASLt's epilogue, where it has outer-vector scaling for the
// GPU; nullopt where it has not.
std::optional<mlx::core::array> fp8_gemm_scaled(
    const mlx::core::array& x, const mlx::core::array& x_scale, const mlx::core::array& w,
    const mlx::core::array& w_scale, mlx::core::Dtype out, mlx::core::Stream stream);

}  // namespace mlxs
