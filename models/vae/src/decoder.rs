//! diffusers' `Decoder`: latents to pixels.

use mlx::nn::{Conv2d, GroupNorm};
use mlx::{Array, Dtype, Module};

use crate::config::VaeConfig;
use crate::conv::conv2d;
use crate::layers::{upsample_nearest2x, MidBlock, ResnetBlock, Shapes};

/// `UpDecoderBlock2D`: ResNets, then (except at the last level) nearest 2x upsampling and
/// a 3x3 convolution.
#[derive(Module, Clone)]
pub struct UpBlock {
    pub resnets: Vec<ResnetBlock>,
    #[weight("upsamplers.0.conv")]
    pub upsampler: Option<Conv2d>,
}

impl UpBlock {
    #[mlx::graph]
    pub fn forward(&self, x: &Array) -> Array {
        let mut h = x.clone();
        for resnet in &self.resnets {
            h = resnet.forward(&h);
        }
        match &self.upsampler {
            Some(conv) => conv2d(conv, &upsample_nearest2x(&h)),
            None => h,
        }
    }
}

/// conv_in, the mid block, the up blocks (channels in reverse order, `layers_per_block + 1`
/// ResNets each), GroupNorm, SiLU and conv_out.
#[derive(Module, Clone)]
pub struct Decoder {
    pub conv_in: Conv2d,
    pub mid_block: MidBlock,
    pub up_blocks: Vec<UpBlock>,
    pub conv_norm_out: GroupNorm,
    pub conv_out: Conv2d,
}

impl Decoder {
    /// Zero weights of `config`'s shapes, ready to be loaded.
    pub fn zeros(config: &VaeConfig, dtype: Dtype) -> Decoder {
        let shapes = Shapes {
            groups: config.norm_num_groups,
            dtype,
        };
        let reversed: Vec<i32> = config.block_out_channels.iter().rev().copied().collect();
        let top = reversed.first().copied().unwrap_or(1);
        let bottom = reversed.last().copied().unwrap_or(1);
        let up_blocks = reversed
            .iter()
            .enumerate()
            .map(|(i, &out)| {
                let inp = if i == 0 { top } else { reversed[i - 1] };
                UpBlock {
                    resnets: (0..=config.layers_per_block)
                        .map(|l| shapes.resnet(if l == 0 { inp } else { out }, out))
                        .collect(),
                    upsampler: (i + 1 < reversed.len()).then(|| shapes.conv3(out, out)),
                }
            })
            .collect();
        Decoder {
            conv_in: shapes.conv3(config.latent_channels, top),
            mid_block: shapes.mid_block(top, config.mid_block_add_attention),
            up_blocks,
            conv_norm_out: shapes.norm(bottom),
            conv_out: shapes.conv3(bottom, config.out_channels),
        }
    }

    /// `z: [N, h, w, latent_channels]` to `[N, h·2^(levels-1), w·2^(levels-1), out_channels]`.
    #[mlx::graph]
    pub fn forward(&self, z: &Array) -> Array {
        let mut h = self.mid_block.forward(&conv2d(&self.conv_in, z));
        for block in &self.up_blocks {
            h = block.forward(&h);
        }
        conv2d(&self.conv_out, &self.conv_norm_out.forward(&h).silu())
    }
}
