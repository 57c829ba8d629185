//! Matrix products and convolution.

use crate::array::{invalid, op};
use crate::ops::arith::binary;
use crate::sys::{self, Binary};
use crate::Array;

impl Array {
    /// Matrix product, batched over leading axes (NumPy's `matmul`).
    #[track_caller]
    pub fn matmul(&self, other: &Array) -> Array {
        binary(self, other, Binary::Matmul, "matmul")
    }

    /// `beta * self + alpha * (a @ b)` in one op (the bias-add of a linear layer).
    #[track_caller]
    pub fn addmm(&self, a: &Array, b: &Array, alpha: f32, beta: f32) -> Array {
        op("addmm", &[Some(self), Some(a), Some(b)], |r, out| {
            // SAFETY: live handles.
            unsafe { sys::mlxs_addmm(r[0], r[1], r[2], alpha, beta, out) }
        })
    }

    /// 2-D convolution of `self` (`[N, H, W, C_in]`, channels last as in MLX) with
    /// `weight` (`[C_out, KH, KW, C_in / groups]`).
    #[track_caller]
    pub fn conv2d(&self, weight: &Array, params: Conv2d) -> Array {
        let Conv2d {
            stride,
            padding,
            dilation,
            groups,
        } = params;
        // MLX divides by these unchecked: zero would kill the process.
        if groups < 1 || stride.0 < 1 || stride.1 < 1 || dilation.0 < 1 || dilation.1 < 1 {
            return invalid(
                "conv2d",
                &[self, weight],
                format!("groups, strides and dilations must be at least 1 (got {params:?})"),
            );
        }
        op("conv2d", &[Some(self), Some(weight)], |r, out| {
            // SAFETY: live handles.
            unsafe {
                sys::mlxs_conv2d(
                    r[0], r[1], stride.0, stride.1, padding.0, padding.1, dilation.0, dilation.1,
                    groups, out,
                )
            }
        })
    }
}

/// Stride, padding, dilation (each `(height, width)`) and groups of [`Array::conv2d`].
/// `Conv2d::default()` is stride 1, no padding, no dilation, one group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Conv2d {
    pub stride: (i32, i32),
    pub padding: (i32, i32),
    pub dilation: (i32, i32),
    pub groups: i32,
}

impl Default for Conv2d {
    fn default() -> Self {
        Conv2d {
            stride: (1, 1),
            padding: (0, 0),
            dilation: (1, 1),
            groups: 1,
        }
    }
}
