// Fused kernels of our own for MLX's CUDA backend, compiled by the runtime (jit.h) and run
// as MLX custom kernels, with the same computation composed of MLX operations on every
// other device.

#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "mlx/array.h"

namespace mlxs {

// Interleaved-pair rotary embedding by per-token tables, optionally after an RMSNorm over
// each head: x: [B, L, H, D]; cos, sin: [B, L, 1, D] (each pair's angle repeated over its
// two channels, sin negated on the first); weight: [D]. Computes
// `y = norm(x)`, `out = y * cos + swap_pairs(y) * sin` in float32, in x's dtype.
mlx::core::array rope_table(
    const mlx::core::array& x, const mlx::core::array& cos, const mlx::core::array& sin,
    const std::optional<mlx::core::array>& weight, float eps);

// The RMSNorms around a transformer sublayer, over the last axis of y: [B, L, D]:
// `h = x + gate * rms_norm(y, y_weight, y_eps)` when x is given (else `h = y`), rounded to
// y's dtype, then `out = rms_norm(h, out_weight, out_eps) * scale` when out_weight is given.
// gate and scale broadcast against [B, 1, D] (per-item modulation) and may be absent.
// Returns {h} (no out_weight), {out} (no x) or {h, out}.
std::vector<mlx::core::array> residual_rms_norm(
    const std::optional<mlx::core::array>& x, const mlx::core::array& y,
    const std::optional<mlx::core::array>& y_weight, float y_eps,
    const std::optional<mlx::core::array>& gate,
    const std::optional<mlx::core::array>& out_weight, float out_eps,
    const std::optional<mlx::core::array>& scale);

// Per-row FP8 (E4M3) quantization over the last axis of x: `scale = max |row| / 448` (1 for
// a row of zeros), `q = e4m3(row / scale)` (uint8 bit patterns, rounded to nearest even).
// Returns {q, scale}, scale in float32 with x's shape less its last axis.
std::pair<mlx::core::array, mlx::core::array> fp8_quantize(const mlx::core::array& x);

// fp8_quantize of a SwiGLU's `silu(gate) * up` (each operation rounded to their dtype), in
// one kernel that reads gate and up where fp8_quantize's kernel runs. gate and up have one
// shape and one floating-point dtype.
std::pair<mlx::core::array, mlx::core::array> fp8_quantize_swiglu(
    const mlx::core::array& gate, const mlx::core::array& up);

// mx::dequantize (same operands, checks and result), on CUDA GPUs by a kernel of ours for
// 8-bit affine and mxfp8 weights: sixteen a thread, where MLX's kernel reads one byte a
// thread and runs at under a third of an H200's bandwidth. Its values are MLX's (affine:
// `scale * q + bias` in the scales' dtype, which must be the result's; mxfp8: the E4M3
// value times the power-of-two scale, rounded once).
mlx::core::array dequantize(
    const mlx::core::array& w, const mlx::core::array& scales,
    const std::optional<mlx::core::array>& biases, int group_size, int bits,
    const std::string& mode, std::optional<mlx::core::Dtype> dtype);

// Whether `device` is a CUDA GPU of compute capability 8.9 or later (Ada, Hopper on): the
// generation that converts to E4M3 in hardware (PTX `cvt` to e4m3x2) and has E4M3 tensor
// cores.
bool has_fp8_hardware(const mlx::core::Device& device);

// "[2, 3] uint8": an array's shape and dtype, for error messages.
std::string describe(const mlx::core::array& a);

// Whether the kernels of this file run: on CUDA GPUs, in builds that found CUDA's headers,
// unless MLX_RS_FUSED_KERNELS=0.
bool fused_kernels_enabled();

}  // namespace mlxs
