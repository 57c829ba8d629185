//! diffusers' `Encoder` (with `double_z`): image to the posterior's moments.

use mlx::nn::{Conv2d, GroupNorm};
use mlx::{Array, Dtype, Module};

use crate::config::VaeConfig;
use crate::conv::conv2d;
use crate::layers::{downsample, MidBlock, ResnetBlock, Shapes};

/// `DownEncoderBlock2D`: ResNets, then (except at the last level) a stride-2 convolution.
#[derive(Module, Clone)]
pub struct DownBlock {
    pub resnets: Vec<ResnetBlock>,
    #[weight("downsamplers.0.conv")]
    pub downsampler: Option<Conv2d>,
}

impl DownBlock {
    #[mlx::graph]
    pub fn forward(&self, x: &Array) -> Array {
        let mut h = x.clone();
        for resnet in &self.resnets {
            h = resnet.forward(&h);
        }
        match &self.downsampler {
            Some(conv) => downsample(conv, &h),
            None => h,
        }
    }
}

/// conv_in, the down blocks, the mid block, GroupNorm, SiLU and conv_out to
/// `2 * latent_channels` moments (mean, then log-variance).
#[derive(Module, Clone)]
pub struct Encoder {
    pub conv_in: Conv2d,
    pub down_blocks: Vec<DownBlock>,
    pub mid_block: MidBlock,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Encoder {
    /// Zero weights of `config`'s shapes, ready to be loaded.
    pub fn zeros(config: &VaeConfig, dtype: Dtype) -> Encoder {
        let shapes = Shapes {
            groups: config.norm_num_groups,
            dtype,
        };
        let channels = &config.block_out_channels;
        let first = channels.first().copied().unwrap_or(1);
        let last = channels.last().copied().unwrap_or(1);
        let down_blocks = channels
            .iter()
            .enumerate()
            .map(|(i, &out)| {
                let inp = if i == 0 { first } else { channels[i - 1] };
                DownBlock {
                    resnets: (0..config.layers_per_block)
                        .map(|l| shapes.resnet(if l == 0 { inp } else { out }, out))
                        .collect(),
                    downsampler: (i + 1 < channels.len())
                        .then(|| Conv2d::zeros(out, out, 3, 2, 0, dtype)),
                }
            })
            .collect();
        Encoder {
            conv_in: shapes.conv3(config.in_channels, first),
            down_blocks,
            mid_block: shapes.mid_block(last, config.mid_block_add_attention),
            conv_norm_out: shapes.norm(last),
            conv_out: shapes.conv3(last, 2 * config.latent_channels),
        }
    }

    /// `x: [N, H, W, in_channels]` to `[N, H / 2^(levels-1), W / 2^(levels-1), 2 * latent]`.
    #[mlx::graph]
    pub fn forward(&self, x: &Array) -> Array {
        let mut h = conv2d(&self.conv_in, x);
        for block in &self.down_blocks {
            h = block.forward(&h);
        }
        let h = self.mid_block.forward(&h);
        conv2d(&self.conv_out, &self.conv_norm_out.forward(&h).silu())
    }
}
