//! `AutoencoderKL`: the public API, NCHW in and out as diffusers.
//!
//! A batch is decoded (encoded) one item at a time, each item evaluated before the next is
//! built: the results are the ones diffusers gets for the whole batch, and memory holds
//! one item's activations (one tile's, when tiling) instead of the batch's.

use mlx::nn::Conv2d;
use mlx::{concatenate, Array, Dtype, Module};

use crate::config::VaeConfig;
use crate::conv::conv2d;
use crate::decoder::Decoder;
use crate::encoder::Encoder;
use crate::gaussian::DiagonalGaussian;
use crate::tiling::{tiled, TilePlan, Tiling};
use crate::{Result, VaeError};

/// Which halves to load: decoding needs only the decoder (and `post_quant_conv`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Parts {
    Decoder,
    Both,
}

/// diffusers' `AutoencoderKL`. Field paths are its weight names.
#[derive(Module, Clone)]
pub struct AutoencoderKL {
    /// `None` when loaded for decoding only.
    pub encoder: Option<Encoder>,
    pub decoder: Decoder,
    /// 1x1 convolutions around the latents, when the config has them.
    pub quant_conv: Option<Conv2d>,
    pub post_quant_conv: Option<Conv2d>,
    /// `sample_size` sets the tile size of tiled decoding and encoding.
    #[weight(skip)]
    pub config: VaeConfig,
}

impl AutoencoderKL {
    /// Zero weights of `config`'s shapes in `dtype`, ready to be loaded.
    pub fn zeros(config: &VaeConfig, dtype: Dtype, parts: Parts) -> AutoencoderKL {
        let latent = config.latent_channels;
        let encoding = parts == Parts::Both;
        AutoencoderKL {
            encoder: encoding.then(|| Encoder::zeros(config, dtype)),
            decoder: Decoder::zeros(config, dtype),
            quant_conv: (encoding && config.use_quant_conv)
                .then(|| Conv2d::zeros(2 * latent, 2 * latent, 1, 1, 0, dtype)),
            post_quant_conv: config
                .use_post_quant_conv
                .then(|| Conv2d::zeros(latent, latent, 1, 1, 0, dtype)),
            config: config.clone(),
        }
    }

    /// The dtype the model computes in (its weights').
    pub fn dtype(&self) -> Dtype {
        self.decoder.conv_in.weight.dtype()
    }

    /// `z: [B, latent_channels, h, w]`, the decoder's input, to images
    /// `[B, out_channels, h·2^(levels-1), w·2^(levels-1)]` (diffusers'
    /// `vae.decode(z).sample`), without tiling.
    pub fn decode(&self, z: &Array) -> Result<Array> {
        self.decode_with(z, Tiling::Off)
    }

    /// [`decode`](Self::decode), tiled as `tiling` says.
    pub fn decode_with(&self, z: &Array, tiling: Tiling) -> Result<Array> {
        let z = self.checked_input(z, "latents", self.config.latent_channels)?;
        let tile = self.config.tile_latent_size();
        let items = per_item(&z, |item| {
            let [_, h, w, _] = item.dims();
            if tiling.applies(h, w, tile) {
                tiled(item, &TilePlan::decode(&self.config)?, |t| {
                    Ok(self.decode_tile(t))
                })
            } else {
                let out = self.decode_tile(item);
                out.eval()?;
                Ok(out)
            }
        })?;
        Ok(items.transpose(&[0, 3, 1, 2]))
    }

    /// The pipeline's decode: `latents` cast to the model's dtype, `z = latents /
    /// scaling_factor + shift_factor` (no shift when the config has none), then
    /// [`decode`](Self::decode).
    pub fn decode_latents(&self, latents: &Array) -> Result<Array> {
        self.decode_latents_with(latents, Tiling::Off)
    }

    /// [`decode_latents`](Self::decode_latents), tiled as `tiling` says.
    pub fn decode_latents_with(&self, latents: &Array, tiling: Tiling) -> Result<Array> {
        // ZImagePipeline casts before it scales: in bfloat16 the rounding is the same.
        // Integer latents pass through for decode_with to name the dtype.
        let latents = if latents.dtype().is_float() {
            latents.astype(self.dtype())
        } else {
            latents.clone()
        };
        self.decode_with(&self.unscale_latents(&latents), tiling)
    }

    /// `latents / scaling_factor + shift_factor`: the diffusion model's latents to the
    /// decoder's input.
    pub fn unscale_latents(&self, latents: &Array) -> Array {
        latents / self.config.scaling_factor + self.config.shift_factor.unwrap_or(0.0)
    }

    /// `(z - shift_factor) · scaling_factor`: encoded latents to the diffusion model's
    /// (what image-to-image pipelines do after [`encode`](Self::encode)).
    pub fn scale_latents(&self, z: &Array) -> Array {
        (z - self.config.shift_factor.unwrap_or(0.0)) * self.config.scaling_factor
    }

    /// `image: [B, in_channels, H, W]` in `[-1, 1]` to the posterior over latents
    /// `[B, latent_channels, H/2^(levels-1), W/2^(levels-1)]`, without tiling.
    pub fn encode(&self, image: &Array) -> Result<DiagonalGaussian> {
        self.encode_with(image, Tiling::Off)
    }

    /// [`encode`](Self::encode), tiled as `tiling` says.
    pub fn encode_with(&self, image: &Array, tiling: Tiling) -> Result<DiagonalGaussian> {
        let encoder = self.encoder.as_ref().ok_or_else(|| {
            VaeError::Input("this autoencoder was loaded without its encoder".into())
        })?;
        let image = self.checked_input(image, "image", self.config.in_channels)?;
        let tile = self.config.sample_size;
        let moments = per_item(&image, |item| {
            let [_, h, w, _] = item.dims();
            if tiling.applies(h, w, tile) {
                tiled(item, &TilePlan::encode(&self.config)?, |t| {
                    self.encode_tile(encoder, t)
                })
            } else {
                let out = self.encode_tile(encoder, item)?;
                out.eval()?;
                Ok(out)
            }
        })?;
        Ok(DiagonalGaussian::from_moments(
            &moments.transpose(&[0, 3, 1, 2]),
        ))
    }

    /// `post_quant_conv` and the decoder on one NHWC latent tile.
    fn decode_tile(&self, z: &Array) -> Array {
        match &self.post_quant_conv {
            Some(conv) => self.decoder.forward(&conv2d(conv, z)),
            None => self.decoder.forward(z),
        }
    }

    /// The encoder and `quant_conv` on one NHWC image tile: the moments.
    fn encode_tile(&self, encoder: &Encoder, x: &Array) -> Result<Array> {
        let [_, mut h, mut w, _] = x.dims();
        // Each stride-2 convolution sees one padded row and column more than its input
        // and needs three: diffusers fails on anything smaller too.
        for level in 0..self.config.downsamplings() {
            if h < 2 || w < 2 {
                return Err(VaeError::Input(format!(
                    "image: a {}x{} region is too small for the encoder's {} downsamplings \
                     (at level {level} it is {h}x{w}; each needs at least 2x2)",
                    x.dim(1).unwrap_or(0),
                    x.dim(2).unwrap_or(0),
                    self.config.downsamplings(),
                )));
            }
            h = (h - 2) / 2 + 1;
            w = (w - 2) / 2 + 1;
        }
        let moments = encoder.forward(x);
        Ok(match &self.quant_conv {
            Some(conv) => conv2d(conv, &moments),
            None => moments,
        })
    }

    /// `x` checked to be `[B, channels, H, W]` of floats, as NHWC in the model's dtype.
    fn checked_input(&self, x: &Array, name: &str, channels: i32) -> Result<Array> {
        x.check()?;
        let shape = x.shape();
        if shape.len() != 4 || shape[1] != channels || shape.iter().any(|&d| d < 1) {
            return Err(VaeError::Input(format!(
                "{name}: expected [batch, {channels}, height, width], found {shape:?}"
            )));
        }
        if !x.dtype().is_float() {
            return Err(VaeError::Input(format!(
                "{name}: expected floating-point values, found {}",
                x.dtype()
            )));
        }
        Ok(x.transpose(&[0, 2, 3, 1]).astype(self.dtype()))
    }
}

/// `f` on each item `[1, ...]` of `x`'s batch, the results joined.
fn per_item(x: &Array, mut f: impl FnMut(&Array) -> Result<Array>) -> Result<Array> {
    let batch = x.dim(0).unwrap_or(0);
    if batch == 1 {
        return f(x);
    }
    let items = (0..batch)
        .map(|b| f(&x.slice_axis(0, b, b + 1)))
        .collect::<Result<Vec<_>>>()?;
    Ok(concatenate(&items.iter().collect::<Vec<_>>(), 0))
}
