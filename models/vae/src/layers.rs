//! The blocks both halves share, each a `#[derive(mlx::Module)]` struct whose field paths
//! are diffusers' weight names: `ResnetBlock2D`, the mid block with its attention, and the
//! down- and upsampling convolutions. Activations are NHWC.

use mlx::fast::{self, Mask};
use mlx::nn::{Conv2d, Dense, GroupNorm, Linear};
use mlx::{Array, Dtype, Module};

use crate::config::NORM_EPS;
use crate::conv::conv2d;

/// What the zero-initialized blocks (the templates loading fills in) are built with.
#[derive(Clone, Copy, Debug)]
pub struct Shapes {
    pub groups: i32,
    pub dtype: Dtype,
}

impl Shapes {
    pub fn norm(self, channels: i32) -> GroupNorm {
        GroupNorm::new(channels, self.groups, NORM_EPS, self.dtype)
    }

    /// A 3x3 convolution that keeps the size.
    pub fn conv3(self, inp: i32, out: i32) -> Conv2d {
        Conv2d::zeros(inp, out, 3, 1, 1, self.dtype)
    }

    pub fn conv1(self, inp: i32, out: i32) -> Conv2d {
        Conv2d::zeros(inp, out, 1, 1, 0, self.dtype)
    }

    fn linear(self, channels: i32) -> Linear {
        Linear::Dense(Dense {
            weight: Array::zeros(&[channels, channels], self.dtype),
            bias: Some(Array::zeros(&[channels], self.dtype)),
        })
    }

    pub fn resnet(self, inp: i32, out: i32) -> ResnetBlock {
        ResnetBlock {
            norm1: self.norm(inp),
            conv1: self.conv3(inp, out),
            norm2: self.norm(out),
            conv2: self.conv3(out, out),
            conv_shortcut: (inp != out).then(|| self.conv1(inp, out)),
        }
    }

    /// diffusers' `UNetMidBlock2D` with one layer: two ResNets, with attention between
    /// them unless `attention` is false.
    pub fn mid_block(self, channels: i32, attention: bool) -> MidBlock {
        MidBlock {
            resnets: vec![self.resnet(channels, channels); 2],
            attentions: if attention {
                vec![Attention {
                    group_norm: self.norm(channels),
                    to_q: self.linear(channels),
                    to_k: self.linear(channels),
                    to_v: self.linear(channels),
                    to_out: self.linear(channels),
                }]
            } else {
                Vec::new()
            },
        }
    }
}

/// diffusers' `ResnetBlock2D` without a time embedding (output scale 1): GroupNorm, SiLU,
/// conv, GroupNorm, SiLU, conv, plus the input, through a 1x1 conv when the channel count
/// changes.
#[derive(Module, Clone)]
pub struct ResnetBlock {
    pub norm1: GroupNorm,
    pub conv1: Conv2d,
    pub norm2: GroupNorm,
    pub conv2: Conv2d,
    pub conv_shortcut: Option<Conv2d>,
}

impl ResnetBlock {
    #[mlx::graph]
    pub fn forward(&self, x: &Array) -> Array {
        let h = conv2d(&self.conv1, &self.norm1.forward(x).silu());
        let h = conv2d(&self.conv2, &self.norm2.forward(&h).silu());
        match &self.conv_shortcut {
            Some(shortcut) => conv2d(shortcut, x) + h,
            None => x + h,
        }
    }
}

/// diffusers' `Attention` as the VAE's mid block builds it: GroupNorm, then one head over
/// all pixels (scale `1/sqrt(C)`), the output projection, and the input added back
/// (`residual_connection=True`, `rescale_output_factor=1`).
#[derive(Module, Clone)]
pub struct Attention {
    pub group_norm: GroupNorm,
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    #[weight("to_out.0")]
    pub to_out: Linear,
}

impl Attention {
    #[mlx::graph]
    pub fn forward(&self, x: &Array) -> Array {
        let [n, h, w, c] = x.dims();
        // [n, heads = 1, pixels, c]: the layout attention takes.
        let tokens = self.group_norm.forward(x).reshape(&[n, 1, h * w, c]);
        let attended = fast::scaled_dot_product_attention(
            &self.to_q.forward(&tokens),
            &self.to_k.forward(&tokens),
            &self.to_v.forward(&tokens),
            1.0 / (c as f32).sqrt(),
            Mask::None,
        );
        self.to_out.forward(&attended).reshape(&[n, h, w, c]) + x
    }
}

/// The middle of both halves: ResNet, attention (unless the config leaves it out), ResNet.
#[derive(Module, Clone)]
pub struct MidBlock {
    pub resnets: Vec<ResnetBlock>,
    /// Empty when `mid_block_add_attention` is false.
    pub attentions: Vec<Attention>,
}

impl MidBlock {
    pub fn forward(&self, x: &Array) -> Array {
        let mut h = x.clone();
        for (i, resnet) in self.resnets.iter().enumerate() {
            // The attentions sit between consecutive ResNets.
            if let Some(attention) = i.checked_sub(1).and_then(|a| self.attentions.get(a)) {
                h = attention.forward(&h);
            }
            h = resnet.forward(&h);
        }
        h
    }
}

/// diffusers' `Downsample2D` with `padding=0`: zero-pad one row at the bottom and one
/// column at the right, then a 3x3 convolution of stride 2 without padding.
pub fn downsample(conv: &Conv2d, x: &Array) -> Array {
    conv2d(conv, &x.pad(&[(0, 0), (0, 1), (0, 1), (0, 0)], 0.0))
}

/// Nearest-neighbour upsampling by 2 of `[N, H, W, C]` (PyTorch's
/// `F.interpolate(scale_factor=2, mode="nearest")`): each pixel repeated in a 2x2 square.
/// A layer every model with a convolutional decoder needs; it belongs in `mlx::nn`.
pub fn upsample_nearest2x(x: &Array) -> Array {
    let [n, h, w, c] = x.dims();
    x.reshape(&[n, h, 1, w, 1, c])
        .broadcast_to(&[n, h, 2, w, 2, c])
        .reshape(&[n, 2 * h, 2 * w, c])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_upsampling_repeats_each_pixel_in_a_square() {
        // [1, 2, 2, 2]: pixel (y, x) holds (10y + x, -(10y + x)).
        let x = Array::from_slice(&[0f32, 0., 1., -1., 10., -10., 11., -11.], &[1, 2, 2, 2]);
        let up = upsample_nearest2x(&x);
        assert_eq!(up.shape(), &[1, 4, 4, 2]);
        let values = up.to_vec::<f32>().unwrap();
        for y in 0..4 {
            for x in 0..4 {
                let expected = (10 * (y / 2) + x / 2) as f32;
                let at = (y * 4 + x) * 2;
                assert_eq!(
                    values[at..at + 2],
                    [expected, -expected],
                    "pixel ({y}, {x})"
                );
            }
        }
    }

    #[test]
    fn downsampling_pads_bottom_and_right_only() {
        // A 3x3 kernel that picks its bottom-right tap: output (i, j) is input
        // (2i + 2, 2j + 2), zero past the edge.
        let mut weight = vec![0f32; 9];
        weight[8] = 1.0;
        let conv = Conv2d {
            weight: Array::from_slice(&weight, &[1, 1, 3, 3]),
            bias: None,
            stride: 2,
            padding: 0,
        };
        let x = Array::arange(1.0, 17.0, 1.0, Dtype::F32).reshape(&[1, 4, 4, 1]);
        let y = downsample(&conv, &x);
        assert_eq!(y.shape(), &[1, 2, 2, 1]);
        // Input (2, 2) = 11; the others fall into the padding.
        assert_eq!(y.to_vec::<f32>().unwrap(), vec![11.0, 0.0, 0.0, 0.0]);
    }
}
