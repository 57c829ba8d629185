//! FP8 (E4M3) values as uint8 bit patterns, and products of E4M3 matrices that run on FP8
//! tensor cores where the GPU has them (compute capability 8.9 and later, CUDA builds).

use crate::array::op;
use crate::sys;
use crate::{Array, Dtype};

impl Array {
    /// The E4M3 bit patterns (uint8) nearest the values; E4M3's largest finite value is
    /// 448, so scale first.
    #[track_caller]
    pub fn to_fp8(&self) -> Array {
        op("to_fp8", &[Some(self)], |r, out| {
            // SAFETY: live handle.
            unsafe { sys::mlxs_to_fp8(r[0], out) }
        })
    }

    /// The values E4M3 bit patterns (uint8) stand for, in `dtype`.
    #[track_caller]
    pub fn from_fp8(&self, dtype: Dtype) -> Array {
        op("from_fp8", &[Some(self)], |r, out| {
            // SAFETY: live handle.
            unsafe { sys::mlxs_from_fp8(r[0], dtype.code(), out) }
        })
    }
}

/// Rows of E4M3 values (uint8 bit patterns) with one float32 scale each:
/// `row ≈ scale · e4m3(values)`, the scale the row's largest magnitude over 448 (E4M3's
/// largest finite value). Per-channel weights and per-token activations of FP8 products
/// alike.
#[derive(Clone)]
pub struct Fp8Rows {
    /// The E4M3 bit patterns, the shape of what was quantized.
    pub values: Array,
    /// The float32 scales: that shape without its last axis.
    pub scales: Array,
}

impl Fp8Rows {
    /// Quantizes `x` row by row along its last axis, rounding to nearest even; a row of
    /// zeros (or of nothing) gets scale 1. NaNs are passed over by the scale and stay NaN;
    /// an infinity makes its row's scale infinite. One kernel on CUDA GPUs that convert to
    /// E4M3 in hardware (compute capability 8.9 on; a block per row), MLX's ops elsewhere.
    #[track_caller]
    pub fn quantize(x: &Array) -> Fp8Rows {
        Fp8Rows::from_op("fp8_quantize", &[x], |r, out| {
            // SAFETY: live handle.
            unsafe { sys::mlxs_fp8_quantize(r[0], out) }
        })
    }

    /// [`Fp8Rows::quantize`] of a SwiGLU's `silu(gate) · up` (each operation rounded to
    /// their dtype), computed inside the quantization kernel where that runs: the product
    /// is never stored in the compute dtype. `gate` and `up` have one shape and dtype.
    #[track_caller]
    pub fn quantize_swiglu(gate: &Array, up: &Array) -> Fp8Rows {
        Fp8Rows::from_op("fp8_quantize_swiglu", &[gate, up], |r, out| {
            // SAFETY: live handles.
            unsafe { sys::mlxs_fp8_quantize_swiglu(r[0], r[1], out) }
        })
    }

    #[track_caller]
    fn from_op(
        name: &'static str,
        inputs: &[&Array],
        f: impl FnOnce(&[*const sys::mlxs_array], *mut *mut sys::mlxs_vec) -> std::ffi::c_int,
    ) -> Fp8Rows {
        match crate::array_list::op_list(name, inputs, f).map(Vec::into_iter) {
            Ok(mut outs) => match (outs.next(), outs.next()) {
                (Some(values), Some(scales)) => Fp8Rows { values, scales },
                _ => Fp8Rows::failed(crate::array::invalid(
                    name,
                    inputs,
                    "MLX returned too few arrays",
                )),
            },
            Err(error) => Fp8Rows::failed(Array::failed(error)),
        }
    }

    fn failed(error: Array) -> Fp8Rows {
        Fp8Rows {
            values: error.clone(),
            scales: error,
        }
    }

    /// The values the rows stand for, in `dtype`.
    #[track_caller]
    pub fn dequantize(&self, dtype: Dtype) -> Array {
        let scales = self.scales.expand_dims(-1);
        (self.values.from_fp8(Dtype::F32) * scales).astype(dtype)
    }
}

/// `x · wᵀ` for per-row E4M3 arrays `x: [..., K]` and `w: [N, K]` (each row times its
/// scale), `[..., N]` in the floating-point `dtype`. Where [`fp8_kernel`] says so, one
/// cuBLASLt FP8 kernel with the tensor cores' fast accumulation, the scales applied in its
/// epilogue where cuBLASLt can (else in one element-wise pass, which MLX's compiler may fuse
/// with what follows); elsewhere the product of the dequantized operands in float32, which
/// is the same up to rounding.
#[track_caller]
pub fn fp8_matmul(x: &Fp8Rows, w: &Fp8Rows, dtype: Dtype) -> Array {
    op(
        "fp8_matmul",
        &[
            Some(&x.values),
            Some(&x.scales),
            Some(&w.values),
            Some(&w.scales),
        ],
        |r, out| {
            // SAFETY: live handles.
            unsafe { sys::mlxs_fp8_matmul(r[0], r[1], r[2], r[3], dtype.code(), out) }
        },
    )
}

/// Whether [`fp8_matmul`] of `[M, K]` by `[N, K]` runs on FP8 tensor cores on the default
/// device: a GPU of compute capability 8.9 or later, in a CUDA build that found CUDA's
/// headers, with `n` and `k` multiples of 16.
pub fn fp8_kernel(n: i32, k: i32) -> bool {
    // SAFETY: no pointers; the shim catches everything.
    unsafe { sys::mlxs_fp8_kernel(n, k) == 1 }
}
