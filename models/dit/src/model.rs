//! `ZImageTransformer2DModel`: embedders, refiners, the main layers and the final layer.
//!
//! The forward pass is split where TeaCache needs to cut it: [`embed`](ZImage::embed)
//! (everything before the main layers), [`main_layers`](ZImage::main_layers) and
//! [`finish`](ZImage::finish) (final layer and unpatchify).

use mlx::{Array, Dtype, Module};

use crate::config::{DitConfig, T_EMBED_MID, T_FREQ_DIM};
use mlx::nn::quantize::unquantizable;
use mlx::nn::{Linear, QuantConfig};

use crate::layers::{Block, CaptionEmbedder, FinalLayer, Shapes, TimestepEmbedder};
use crate::sequence::{fit_captions, patchify, unpatchify, Layout, Sequence};
use crate::{DitError, Result};

/// The Z-Image diffusion transformer. Field paths are diffusers' weight names.
#[derive(Module, Clone)]
pub struct ZImage {
    #[weight("all_x_embedder.2-1")]
    pub x_embedder: Linear,
    #[weight("all_final_layer.2-1")]
    pub final_layer: FinalLayer,
    pub t_embedder: TimestepEmbedder,
    pub cap_embedder: CaptionEmbedder,
    pub x_pad_token: Array,
    pub cap_pad_token: Array,
    pub noise_refiner: Vec<Block>,
    pub context_refiner: Vec<Block>,
    pub layers: Vec<Block>,
    #[weight(skip)]
    pub config: DitConfig,
}

/// The main layers' input: the joint sequence and the timestep embedding.
#[derive(mlx::GraphOutput)]
pub struct Embedded {
    /// `[B, image + caption tokens, dim]`.
    pub tokens: Array,
    /// `[B, min(dim, 256)]`.
    pub adaln: Array,
}

impl ZImage {
    /// A model of `config`'s shapes with zero weights in `dtype`, ready to be loaded.
    pub fn zeros(config: &DitConfig, dtype: Dtype) -> ZImage {
        let shapes = Shapes { config, dtype };
        let c = config;
        let blocks = |n: i32, modulated: bool| (0..n).map(|_| shapes.block(modulated)).collect();
        let dim = c.dim;
        let adaln = c.adaln_dim();
        ZImage {
            x_embedder: shapes.linear(dim, c.patch_dim(), true),
            final_layer: FinalLayer {
                linear: shapes.linear(c.patch_dim(), dim, true),
                modulation: shapes.linear(dim, adaln, true),
            },
            t_embedder: TimestepEmbedder {
                fc1: shapes.linear(T_EMBED_MID, T_FREQ_DIM, true),
                fc2: shapes.linear(adaln, T_EMBED_MID, true),
            },
            cap_embedder: CaptionEmbedder {
                norm: shapes.rms_norm(c.cap_feat_dim),
                linear: shapes.linear(dim, c.cap_feat_dim, true),
            },
            x_pad_token: Array::zeros(&[1, dim], dtype),
            cap_pad_token: Array::zeros(&[1, dim], dtype),
            noise_refiner: blocks(c.n_refiner_layers, true),
            context_refiner: blocks(c.n_refiner_layers, false),
            layers: blocks(c.n_layers, true),
            config: config.clone(),
        }
    }

    /// Every linear layer with its checkpoint path (the `#[weight]` paths above), in
    /// checkpoint order: what quantization walks.
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        let ZImage {
            x_embedder,
            final_layer,
            t_embedder,
            cap_embedder,
            noise_refiner,
            context_refiner,
            layers,
            ..
        } = self;
        let mut out: Vec<(String, &mut Linear)> = vec![
            ("all_x_embedder.2-1".into(), x_embedder),
            (Self::OUTPUT_PROJECTION.into(), &mut final_layer.linear),
            (
                "all_final_layer.2-1.adaLN_modulation.1".into(),
                &mut final_layer.modulation,
            ),
            ("t_embedder.mlp.0".into(), &mut t_embedder.fc1),
            ("t_embedder.mlp.2".into(), &mut t_embedder.fc2),
            ("cap_embedder.1".into(), &mut cap_embedder.linear),
        ];
        for (name, blocks) in [
            ("noise_refiner", noise_refiner),
            ("context_refiner", context_refiner),
            ("layers", layers),
        ] {
            for (i, block) in blocks.iter_mut().enumerate() {
                out.extend(
                    block
                        .linears_mut()
                        .into_iter()
                        .map(|(path, linear)| (format!("{name}.{i}.{path}"), linear)),
                );
            }
        }
        out
    }

    /// The final layer's projection to patch pixels. Quantization leaves it dense, as the
    /// seed did: its error lands unfiltered in the predicted velocity, and it is tiny.
    pub const OUTPUT_PROJECTION: &'static str = "all_final_layer.2-1.linear";

    /// Why quantization with `config` leaves the linear layer at `path` dense, or `None`
    /// if it quantizes it.
    pub fn keeps_dense(path: &str, linear: &Linear, config: &QuantConfig) -> Option<String> {
        if path == Self::OUTPUT_PROJECTION {
            Some("the final projection to patch pixels".into())
        } else {
            unquantizable(linear, config)
        }
    }

    /// The dtype the model computes in (its weights' dtype).
    pub fn dtype(&self) -> Dtype {
        self.x_pad_token.dtype()
    }

    /// Checks a batch against the model and lays out its sequences.
    pub fn layout(&self, latents: &Array, cap_feats: &Array, cap_lens: &[i32]) -> Result<Layout> {
        let c = &self.config;
        let (ls, cs) = (latents.shape(), cap_feats.shape());
        if ls.len() != 4 || ls[1] != c.in_channels {
            return Err(DitError::Input(format!(
                "`latents` must be [batch, {}, height, width], found {ls:?}",
                c.in_channels
            )));
        }
        if cs.len() != 3 || cs[0] != ls[0] || cs[2] != c.cap_feat_dim {
            return Err(DitError::Input(format!(
                "`cap_feats` must be [{}, tokens, {}] (the model's cap_feat_dim), found {cs:?}",
                ls[0], c.cap_feat_dim
            )));
        }
        if cap_lens.len() != ls[0] as usize {
            return Err(DitError::Input(format!(
                "`cap_lens` holds {} lengths for a batch of {}",
                cap_lens.len(),
                ls[0]
            )));
        }
        if let Some(bad) = cap_lens.iter().find(|&&n| n > cs[1]) {
            return Err(DitError::Input(format!(
                "`cap_lens` holds {bad}, more than the {} tokens of `cap_feats`",
                cs[1]
            )));
        }
        Layout::new(c, (ls[2], ls[3]), cap_lens)
    }

    /// One forward pass: the velocity diffusers' transformer returns, `[B, C, H, W]`.
    ///
    /// `t: [B]` is the value diffusers' transformer receives (before `t_scale`), in
    /// [0, 1] when a scheduler made it; other values are taken as diffusers takes them
    /// (the sinusoidal embedding is defined for every `t`). `cap_feats: [B, L,
    /// cap_feat_dim]` holds `cap_lens[i]` real tokens for item `i`. Every input is
    /// floating point; NaN and infinities propagate as IEEE arithmetic has them (nothing
    /// here evaluates the inputs to look).
    pub fn forward(
        &self,
        latents: &Array,
        t: &Array,
        cap_feats: &Array,
        cap_lens: &[i32],
    ) -> Result<Array> {
        let layout = self.layout(latents, cap_feats, cap_lens)?;
        for (name, input) in [
            ("latents", latents),
            ("timestep", t),
            ("cap_feats", cap_feats),
        ] {
            if !input.dtype().is_float() {
                return Err(DitError::Input(format!(
                    "`{name}` must be floating point, found {}",
                    input.dtype()
                )));
            }
        }
        // `layout` checked that the latents are 4-D.
        let [batch, _, _, _] = latents.dims();
        if t.shape() != [batch] {
            return Err(DitError::Input(format!(
                "`timestep` must be [{batch}] (one per latent), found {:?}",
                t.shape()
            )));
        }
        let seq = layout.sequence(&self.config);
        let cap_feats = fit_captions(cap_feats, layout.cap_len, self.dtype());
        let out = self.predict(latents, t, &cap_feats, &seq);
        out.check()?;
        Ok(out)
    }

    /// [`forward`](ZImage::forward) on a prepared batch: `cap_feats` already fitted to the
    /// layout's caption length (see [`fit_captions`]).
    #[mlx::graph]
    pub fn predict(&self, latents: &Array, t: &Array, cap_feats: &Array, seq: &Sequence) -> Array {
        let embedded = self.embed(latents, t, cap_feats, seq);
        let tokens = self.main_layers(&embedded.tokens, &embedded.adaln, seq);
        let hw = (latents.dim(2).unwrap_or(0), latents.dim(3).unwrap_or(0));
        self.finish(&tokens, &embedded.adaln, hw.0, hw.1)
    }

    /// Timestep embedding, patch and caption embedding with pad tokens, both refiners, and
    /// the joint `[image, caption]` sequence.
    #[mlx::graph]
    pub fn embed(&self, latents: &Array, t: &Array, cap_feats: &Array, seq: &Sequence) -> Embedded {
        let dtype = self.dtype();
        let adaln = self
            .t_embedder
            .forward(&(t.astype(Dtype::F32) * f64::from(self.config.t_scale)))
            .astype(dtype);

        let patches = patchify(&latents.astype(dtype), self.config.patch_size());
        let x = self.x_embedder.forward(&patches);
        let [b, n, d] = x.dims();
        let x_len = seq.x_rope.cos.dim(1).unwrap_or(0);
        let pads = self
            .x_pad_token
            .expand_dims(0)
            .broadcast_to(&[b, x_len - n, d]);
        let mut x = mlx::concatenate(&[&x, &pads], 1);
        for block in &self.noise_refiner {
            x = block.forward(&x, None, &seq.x_rope, Some(&adaln));
        }

        let cap = self.cap_embedder.forward(cap_feats);
        let mut cap = mlx::where_(&seq.cap_valid, &cap, &self.cap_pad_token);
        for block in &self.context_refiner {
            cap = block.forward(&cap, seq.cap_mask.as_ref(), &seq.cap_rope, None);
        }
        Embedded {
            tokens: mlx::concatenate(&[&x, &cap], 1),
            adaln,
        }
    }

    /// The main layers over the joint sequence.
    #[mlx::graph]
    pub fn main_layers(&self, tokens: &Array, adaln: &Array, seq: &Sequence) -> Array {
        let rope = seq.joint_rope();
        let mut x = tokens.clone();
        for block in &self.layers {
            x = block.forward(&x, seq.joint_mask.as_ref(), &rope, Some(adaln));
        }
        x
    }

    /// The final layer and unpatchify: `[B, C, height, width]` latents.
    #[mlx::graph]
    pub fn finish(&self, tokens: &Array, adaln: &Array, height: i32, width: i32) -> Array {
        let out = self.final_layer.forward(tokens, adaln);
        unpatchify(
            &out,
            self.config.patch_size(),
            self.config.in_channels,
            (height, width),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DitConfig;

    /// `linears_mut` spells out the checkpoint paths the `#[weight]` attributes define: it
    /// must name exactly the model's linear weights (the 2-D `*.weight` tensors).
    #[test]
    fn linears_mut_names_every_linear_weight() {
        let mut model = ZImage::zeros(&DitConfig::tiny(), Dtype::F32);
        let mut expected: Vec<String> = model
            .parameters()
            .into_iter()
            .filter(|(path, array)| path.ends_with(".weight") && array.ndim() == 2)
            .map(|(path, _)| path)
            .collect();
        let mut named: Vec<String> = model
            .linears_mut()
            .into_iter()
            .map(|(path, _)| format!("{path}.weight"))
            .collect();
        expected.sort();
        named.sort();
        assert_eq!(named, expected);
    }
}
