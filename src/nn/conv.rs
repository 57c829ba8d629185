//! 2-D convolution with PyTorch's weight layout.

use crate::ops::Conv2d as ConvParams;
use crate::{Array, Dtype, Module};

/// `nn.Conv2d` on channels-last input. The weight keeps PyTorch's `[out, in, kh, kw]`
/// layout, so checkpoints load and save unchanged; the forward pass moves it to MLX's
/// `[out, kh, kw, in]` (a transpose MLX folds into the convolution's input copy).
#[derive(Module, Clone)]
pub struct Conv2d {
    pub weight: Array,
    pub bias: Option<Array>,
    #[weight(skip)]
    pub stride: i32,
    #[weight(skip)]
    pub padding: i32,
}

impl Conv2d {
    /// Zeros of a `kernel`x`kernel` convolution from `inp` to `out` channels, with a
    /// bias (what loading fills in).
    pub fn zeros(
        inp: i32,
        out: i32,
        kernel: i32,
        stride: i32,
        padding: i32,
        dtype: Dtype,
    ) -> Conv2d {
        Conv2d {
            weight: Array::zeros(&[out, inp, kernel, kernel], dtype),
            bias: Some(Array::zeros(&[out], dtype)),
            stride,
            padding,
        }
    }

    /// `x: [N, H, W, in]` to `[N, H', W', out]`.
    #[track_caller]
    pub fn forward(&self, x: &Array) -> Array {
        let params = ConvParams {
            stride: (self.stride, self.stride),
            padding: (self.padding, self.padding),
            ..ConvParams::default()
        };
        let y = x.conv2d(&self.weight.transpose(&[0, 2, 3, 1]), params);
        match &self.bias {
            Some(bias) => y + bias,
            None => y,
        }
    }
}
