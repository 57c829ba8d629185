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

/// `x · wᵀ` for E4M3 matrices (uint8 bit patterns) `x: [M, K]` and `w: [N, K]`, in `dtype`.
/// Where [`fp8_kernel`] says so, one cuBLASLt FP8 kernel accumulating in float32; elsewhere
/// the product of the dequantized operands in float32, which is the same up to rounding.
#[track_caller]
pub fn fp8_matmul(x: &Array, w: &Array, dtype: Dtype) -> Array {
    op("fp8_matmul", &[Some(x), Some(w)], |r, out| {
        // SAFETY: live handles.
        unsafe { sys::mlxs_fp8_matmul(r[0], r[1], dtype.code(), out) }
    })
}

/// Whether [`fp8_matmul`] of `[M, K]` by `[N, K]` runs on FP8 tensor cores on the default
/// device: a GPU of compute capability 8.9 or later, in a CUDA build that found CUDA's
/// headers, with `n` and `k` multiples of 16.
pub fn fp8_kernel(n: i32, k: i32) -> bool {
    // SAFETY: no pointers; the shim catches everything.
    unsafe { sys::mlxs_fp8_kernel(n, k) == 1 }
}
