//! The transformer's building blocks, each a `#[derive(mlx::Module)]` struct whose field
//! paths are diffusers' weight names, with its forward pass as an `#[mlx::graph]`.

use mlx::fast::{self, Mask};
use mlx::nn::rope::RopeTable;
use mlx::nn::{Dense, Linear, RmsNorm};
use mlx::{Array, Dtype, Module};

use crate::config::{DitConfig, T_FREQ_DIM};

/// Multi-head self-attention with per-head RMSNorm on queries and keys and 3-axis RoPE.
#[derive(Module, Clone)]
pub struct Attention {
    pub to_q: Linear,
    pub to_k: Linear,
    pub to_v: Linear,
    #[weight("to_out.0")]
    pub to_out: Linear,
    #[weight("norm_q.weight")]
    pub norm_q: Option<Array>,
    #[weight("norm_k.weight")]
    pub norm_k: Option<Array>,
    #[weight(skip)]
    pub heads: i32,
}

/// The epsilon of the attention's QK RMSNorm (fixed in diffusers, unlike `norm_eps`).
const QK_NORM_EPS: f32 = 1e-5;

impl Attention {
    /// `x: [batch, tokens, dim]`; `mask: [batch, 1, 1, tokens]`, true where a key is real.
    #[mlx::graph]
    pub fn forward(&self, x: &Array, mask: Option<&Array>, rope: &RopeTable) -> Array {
        let [b, l, d] = x.dims();
        let head_dim = d / self.heads;
        let split_heads = |t: Array| t.reshape(&[b, l, self.heads, head_dim]);
        let norm_rope = |t: Array, weight: &Option<Array>| match weight {
            Some(w) => rope.apply_after_norm(&split_heads(t), w, QK_NORM_EPS),
            None => rope.apply(&split_heads(t)),
        };
        let [q, k, v] = Linear::forward_each([&self.to_q, &self.to_k, &self.to_v], x);
        let (q, k, v) = (
            norm_rope(q, &self.norm_q),
            norm_rope(k, &self.norm_k),
            split_heads(v),
        );
        let heads_first = |t: &Array| t.transpose(&[0, 2, 1, 3]);
        let attended = fast::scaled_dot_product_attention(
            &heads_first(&q),
            &heads_first(&k),
            &heads_first(&v),
            1.0 / (head_dim as f32).sqrt(),
            mask.map_or(Mask::None, Mask::Array),
        );
        self.to_out
            .forward(&attended.transpose(&[0, 2, 1, 3]).reshape(&[b, l, d]))
    }
}

/// SwiGLU: `w2(silu(w1 x) · w3 x)`.
#[derive(Module, Clone)]
pub struct FeedForward {
    pub w1: Linear,
    pub w2: Linear,
    pub w3: Linear,
}

impl FeedForward {
    #[mlx::graph]
    pub fn forward(&self, x: &Array) -> Array {
        let [gate, up] = Linear::forward_each([&self.w1, &self.w3], x);
        self.w2.forward_swiglu(&gate, &up)
    }
}

/// A transformer block: attention and feed-forward, each between two RMSNorms. Modulated
/// blocks (noise refiner, main layers) scale the normed inputs and gate the residuals with
/// the timestep embedding; caption refiner blocks are not modulated.
#[derive(Module, Clone)]
pub struct Block {
    pub attention: Attention,
    pub feed_forward: FeedForward,
    pub attention_norm1: RmsNorm,
    pub attention_norm2: RmsNorm,
    pub ffn_norm1: RmsNorm,
    pub ffn_norm2: RmsNorm,
    #[weight("adaLN_modulation.0")]
    pub modulation: Option<Linear>,
}

impl Block {
    /// The block's linear layers with their paths inside the block.
    pub fn linears_mut(&mut self) -> Vec<(&'static str, &mut Linear)> {
        let Attention {
            to_q,
            to_k,
            to_v,
            to_out,
            ..
        } = &mut self.attention;
        let FeedForward { w1, w2, w3 } = &mut self.feed_forward;
        let mut out = vec![
            ("attention.to_q", to_q),
            ("attention.to_k", to_k),
            ("attention.to_v", to_v),
            ("attention.to_out.0", to_out),
            ("feed_forward.w1", w1),
            ("feed_forward.w2", w2),
            ("feed_forward.w3", w3),
        ];
        if let Some(modulation) = &mut self.modulation {
            out.push(("adaLN_modulation.0", modulation));
        }
        out
    }

    /// `(scale_msa, gate_msa, scale_mlp, gate_mlp)` as `[batch, 1, dim]`, scales already
    /// `1 + s` and gates already `tanh`; `None` for an unmodulated block.
    fn modulation_params(&self, adaln: Option<&Array>) -> Option<[Array; 4]> {
        let (linear, adaln) = (self.modulation.as_ref()?, adaln?);
        let chunks = linear.forward(adaln).expand_dims(1).split(4, -1);
        Some([
            &chunks[0] + 1.0,
            chunks[1].tanh(),
            &chunks[2] + 1.0,
            chunks[3].tanh(),
        ])
    }

    /// The attention's input: the normed, modulated hidden states (TeaCache watches how
    /// much the first main block's changes between steps).
    #[mlx::graph]
    pub fn modulated_input(&self, x: &Array, adaln: Option<&Array>) -> Array {
        let modulation = self.modulation_params(adaln);
        self.attention_norm1
            .forward_scaled(x, modulation.as_ref().map(|[scale_msa, ..]| scale_msa))
    }

    /// `x: [batch, tokens, dim]`; `adaln: [batch, min(dim, 256)]` for modulated blocks.
    #[mlx::graph]
    pub fn forward(
        &self,
        x: &Array,
        mask: Option<&Array>,
        rope: &RopeTable,
        adaln: Option<&Array>,
    ) -> Array {
        let modulation = self.modulation_params(adaln);
        let [scale_msa, gate_msa, scale_mlp, gate_mlp] = match &modulation {
            Some(m) => m.each_ref().map(Some),
            None => [None; 4],
        };
        let attn_in = self.attention_norm1.forward_scaled(x, scale_msa);
        let attn_out = self.attention.forward(&attn_in, mask, rope);
        let (x, ff_in) = self.attention_norm2.add_normed_then(
            x,
            &attn_out,
            gate_msa,
            &self.ffn_norm1,
            scale_mlp,
        );
        let ff_out = self.feed_forward.forward(&ff_in);
        self.ffn_norm2.add_normed(&x, &ff_out, gate_mlp)
    }
}

/// Sinusoidal features of the (scaled) timestep through a two-layer SiLU MLP.
#[derive(Module, Clone)]
pub struct TimestepEmbedder {
    #[weight("mlp.0")]
    pub fc1: Linear,
    #[weight("mlp.2")]
    pub fc2: Linear,
}

impl TimestepEmbedder {
    /// `t: [batch]`, already multiplied by `t_scale`.
    #[mlx::graph]
    pub fn forward(&self, t: &Array) -> Array {
        let features = timestep_features(t).astype(self.fc1.dtype());
        self.fc2.forward(&self.fc1.forward(&features).silu())
    }
}

/// The frequencies of the timestep's sinusoidal features, `f_k = exp(-ln(10000)·k/128)`,
/// computed as diffusers does, a float32 `exp` of a float32 argument: `t·f` reaches
/// ~1000 rad, where a table computed in float64 moves the output by ~2e-5.
pub(crate) fn timestep_frequencies() -> Vec<f32> {
    let half = T_FREQ_DIM / 2;
    (0..half)
        .map(|k| (-(10000f32.ln()) * k as f32 / half as f32).exp())
        .collect()
}

/// `[cos(t·f), sin(t·f)]` over [`timestep_frequencies`].
fn timestep_features(t: &Array) -> Array {
    let freqs = timestep_frequencies();
    let args =
        t.astype(Dtype::F32).expand_dims(1) * Array::from_slice(&freqs, &[1, freqs.len() as i32]);
    mlx::concatenate(&[&args.cos(), &args.sin()], -1)
}

/// The caption embedder: RMSNorm then a linear layer to the model width.
#[derive(Module, Clone)]
pub struct CaptionEmbedder {
    #[weight("0")]
    pub norm: RmsNorm,
    #[weight("1")]
    pub linear: Linear,
}

impl CaptionEmbedder {
    #[mlx::graph]
    pub fn forward(&self, cap_feats: &Array) -> Array {
        self.linear.forward(&self.norm.forward(cap_feats))
    }
}

/// The last layer: LayerNorm without affine, scaled by the timestep embedding, projected
/// to patch pixels.
#[derive(Module, Clone)]
pub struct FinalLayer {
    pub linear: Linear,
    #[weight("adaLN_modulation.1")]
    pub modulation: Linear,
}

/// The final LayerNorm's epsilon (fixed in diffusers).
const FINAL_NORM_EPS: f32 = 1e-6;

impl FinalLayer {
    #[mlx::graph]
    pub fn forward(&self, x: &Array, adaln: &Array) -> Array {
        let scale = self.modulation.forward(&adaln.silu()) + 1.0;
        let normed = fast::layer_norm(x, None, None, FINAL_NORM_EPS);
        self.linear.forward(&(normed * scale.expand_dims(1)))
    }
}

/// Zero-filled modules of a configuration's shapes, in `dtype` (what loading fills in).
pub(crate) struct Shapes<'a> {
    pub config: &'a DitConfig,
    pub dtype: Dtype,
}

impl Shapes<'_> {
    fn array(&self, shape: &[i32]) -> Array {
        Array::zeros(shape, self.dtype)
    }

    pub fn linear(&self, out: i32, inp: i32, bias: bool) -> Linear {
        Linear::Dense(Dense {
            weight: self.array(&[out, inp]),
            bias: bias.then(|| self.array(&[out])),
        })
    }

    pub fn rms_norm(&self, dim: i32) -> RmsNorm {
        RmsNorm {
            weight: self.array(&[dim]),
            eps: self.config.norm_eps,
        }
    }

    pub fn block(&self, modulated: bool) -> Block {
        let c = self.config;
        let (dim, hidden, head_dim) = (c.dim, c.ffn_hidden(), c.head_dim());
        let qk_norm = || c.qk_norm.then(|| self.array(&[head_dim]));
        Block {
            attention: Attention {
                to_q: self.linear(dim, dim, false),
                to_k: self.linear(dim, dim, false),
                to_v: self.linear(dim, dim, false),
                to_out: self.linear(dim, dim, false),
                norm_q: qk_norm(),
                norm_k: qk_norm(),
                heads: c.n_heads,
            },
            feed_forward: FeedForward {
                w1: self.linear(hidden, dim, false),
                w2: self.linear(dim, hidden, false),
                w3: self.linear(hidden, dim, false),
            },
            attention_norm1: self.rms_norm(dim),
            attention_norm2: self.rms_norm(dim),
            ffn_norm1: self.rms_norm(dim),
            ffn_norm2: self.rms_norm(dim),
            modulation: modulated.then(|| self.linear(4 * dim, c.adaln_dim(), true)),
        }
    }
}
