//! Normalization layers: RMSNorm, LayerNorm and GroupNorm, with PyTorch's weight names
//! (`weight`, `bias`).

use crate::{fast, Array, Dtype, Module};

/// `x / sqrt(mean(x², -1) + eps) · weight` over the last axis (MLX's fused kernel, which
/// accumulates in float32 whatever the input dtype).
#[derive(Module, Clone)]
pub struct RmsNorm {
    pub weight: Array,
    #[weight(skip)]
    pub eps: f32,
}

impl RmsNorm {
    /// A layer of `dim` ones in `dtype` (what loading fills in).
    pub fn ones(dim: i32, eps: f32, dtype: Dtype) -> RmsNorm {
        RmsNorm {
            weight: Array::ones(&[dim], dtype),
            eps,
        }
    }

    #[track_caller]
    pub fn forward(&self, x: &Array) -> Array {
        fast::rms_norm(x, Some(&self.weight), self.eps)
    }
}

/// `(x - mean) / sqrt(var + eps) · weight + bias` over the last axis; without weight and
/// bias when the layer has no affine parameters.
#[derive(Module, Clone)]
pub struct LayerNorm {
    pub weight: Option<Array>,
    pub bias: Option<Array>,
    #[weight(skip)]
    pub eps: f32,
}

impl LayerNorm {
    #[track_caller]
    pub fn forward(&self, x: &Array) -> Array {
        fast::layer_norm(x, self.weight.as_ref(), self.bias.as_ref(), self.eps)
    }
}

/// PyTorch's `GroupNorm` on channels-last input: the channels split into `groups`
/// consecutive groups, each normalized over its channels and all positions, then scaled
/// and shifted per channel. Statistics are computed in float32 and the result cast back.
#[derive(Module, Clone)]
pub struct GroupNorm {
    pub weight: Array,
    pub bias: Array,
    #[weight(skip)]
    pub groups: i32,
    #[weight(skip)]
    pub eps: f32,
}

impl GroupNorm {
    /// A layer over `channels` in `dtype`, ones and zeros (what loading fills in).
    pub fn new(channels: i32, groups: i32, eps: f32, dtype: Dtype) -> GroupNorm {
        GroupNorm {
            weight: Array::ones(&[channels], dtype),
            bias: Array::zeros(&[channels], dtype),
            groups,
            eps,
        }
    }

    /// `x: [N, H, W, C]`.
    #[track_caller]
    pub fn forward(&self, x: &Array) -> Array {
        let [n, h, w, c] = x.dims();
        let grouped =
            x.astype(Dtype::F32)
                .reshape(&[n, h * w, self.groups, c / self.groups.max(1)]);
        let mean = grouped.mean(&[1, 3], true);
        let var = grouped.var(&[1, 3], true, 0);
        let normed =
            ((grouped - mean) * (var + f64::from(self.eps)).rsqrt()).reshape(&[n, h, w, c]);
        normed.astype(x.dtype()) * &self.weight + &self.bias
    }
}
