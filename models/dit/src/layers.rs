//! The transformer's building blocks, each a `#[derive(mlx::Module)]` struct whose field
//! paths are diffusers' weight names, with its forward pass as an `#[mlx::graph]`.

use mlx::fast::{self, Mask};
use mlx::ops::Quantized;
use mlx::{Array, Dtype, Module};

use crate::config::{DitConfig, T_FREQ_DIM};
use crate::quant::{MatmulPath, QuantFormat, BITS, GROUP_SIZE};

/// `nn.Linear`: `x wᵀ + b`, its weight dense or quantized to 8 bits (see [`crate::quant`]).
/// Either way it sits at the same checkpoint path; the variant is part of the structure
/// compiled graphs are keyed on.
#[derive(Module, Clone)]
pub enum Linear {
    Dense(Dense),
    Quantized(QuantizedLinear),
}

impl Linear {
    #[mlx::graph]
    pub fn forward(&self, x: &Array) -> Array {
        match self {
            Linear::Dense(dense) => dense.apply(x),
            Linear::Quantized(quantized) => quantized.apply(x),
        }
    }

    /// The dtype the layer computes in.
    pub fn dtype(&self) -> Dtype {
        match self {
            Linear::Dense(dense) => dense.weight.dtype(),
            Linear::Quantized(quantized) => quantized.dtype,
        }
    }

    /// `(out, in)` features.
    pub fn features(&self) -> (i32, i32) {
        match self {
            Linear::Dense(dense) => matrix_dims(&dense.weight),
            Linear::Quantized(quantized) => quantized.features(),
        }
    }

    /// The layer's parameters counted as a dense layer's: `out · in` weights and the bias
    /// (a quantized weight counts its float elements, not its packed words).
    pub fn dense_parameters(&self) -> usize {
        let (out, inp) = self.features();
        let bias = match self {
            Linear::Dense(dense) => dense.bias.is_some(),
            Linear::Quantized(quantized) => quantized.bias.is_some(),
        };
        out as usize * inp as usize + if bias { out as usize } else { 0 }
    }
}

/// The two dims of a matrix (a linear weight is `[out, in]` by construction: loading keeps
/// the template's shape).
fn matrix_dims(w: &Array) -> (i32, i32) {
    (w.dim(0).unwrap_or(0), w.dim(1).unwrap_or(0))
}

/// A dense linear layer: diffusers' `weight` `[out, in]` and optional `bias` `[out]`.
#[derive(Module, Clone)]
pub struct Dense {
    pub weight: Array,
    pub bias: Option<Array>,
}

impl Dense {
    fn apply(&self, x: &Array) -> Array {
        let y = x.matmul(&self.weight.t());
        match &self.bias {
            Some(bias) => y + bias,
            None => y,
        }
    }
}

/// A linear layer with an 8-bit weight in MLX's packed layout, stored as `weight` (packed
/// `uint32`, `[out, in / 4]`), `weight_scale` (`[out, in / 32]`), `weight_qbias` (affine8
/// only) and the layer's own float `bias`.
#[derive(Module, Clone)]
pub struct QuantizedLinear {
    #[weight("weight")]
    pub packed: Array,
    #[weight("weight_scale")]
    pub scales: Array,
    #[weight("weight_qbias")]
    pub qbias: Option<Array>,
    pub bias: Option<Array>,
    #[weight(skip)]
    pub format: QuantFormat,
    #[weight(skip)]
    pub matmul: MatmulPath,
    /// The compute dtype: of the activations, the output and the dequantized weight.
    #[weight(skip)]
    pub dtype: Dtype,
}

impl QuantizedLinear {
    /// Quantizes a dense layer (lazily); its input features must be a multiple of
    /// [`GROUP_SIZE`].
    #[track_caller]
    pub fn from_dense(
        dense: &Dense,
        format: QuantFormat,
        matmul: MatmulPath,
    ) -> mlx::Result<QuantizedLinear> {
        let q = format.quantize(&dense.weight)?;
        Ok(QuantizedLinear {
            packed: q.weights,
            scales: q.scales,
            qbias: q.biases,
            bias: dense.bias.clone(),
            format,
            matmul,
            dtype: dense.weight.dtype(),
        })
    }

    /// Zeros of the shapes and dtypes a `[out, inp]` layer stores, ready to be loaded.
    pub fn zeros(
        (out, inp): (i32, i32),
        bias: bool,
        format: QuantFormat,
        matmul: MatmulPath,
        dtype: Dtype,
    ) -> QuantizedLinear {
        let groups = [out, inp / GROUP_SIZE];
        let scale_dtype = format.scale_dtype(dtype);
        QuantizedLinear {
            packed: Array::zeros(&[out, inp * BITS / 32], Dtype::U32),
            scales: Array::zeros(&groups, scale_dtype),
            qbias: format
                .has_biases()
                .then(|| Array::zeros(&groups, scale_dtype)),
            bias: bias.then(|| Array::zeros(&[out], dtype)),
            format,
            matmul,
            dtype,
        }
    }

    /// `(out, in)` features, from the packed shape.
    pub fn features(&self) -> (i32, i32) {
        let (out, packed) = matrix_dims(&self.packed);
        (out, packed * 32 / BITS)
    }

    /// MLX's view of the packed weight (clones share the arrays).
    pub fn quantized(&self) -> Quantized {
        Quantized {
            weights: self.packed.clone(),
            scales: self.scales.clone(),
            biases: self.qbias.clone(),
            group_size: GROUP_SIZE,
            bits: BITS,
            mode: self.format.mode(),
        }
    }

    /// The float weight the packed one stands for, `[out, in]` in the compute dtype.
    pub fn dequantize(&self) -> Array {
        self.quantized().dequantize(Some(self.dtype))
    }

    fn apply(&self, x: &Array) -> Array {
        let y = match self.matmul {
            MatmulPath::Kernel => self.quantized().matmul(x, true),
            MatmulPath::Dequantize => x.matmul(&self.dequantize().t()),
        };
        match &self.bias {
            Some(bias) => y + bias,
            None => y,
        }
    }
}

/// Per-token rotary tables: `cos` and `sin` of `[batch, tokens, 1, head_dim / 2]` angles,
/// one angle per consecutive pair of channels (see [`crate::sequence`]).
#[derive(Module, Clone)]
pub struct RopeTable {
    pub cos: Array,
    pub sin: Array,
}

impl RopeTable {
    /// Rotates consecutive channel pairs of `x: [batch, tokens, heads, head_dim]` in float32
    /// (as diffusers does through complex64) and casts back to `x`'s dtype.
    #[mlx::graph]
    pub fn apply(&self, x: &Array) -> Array {
        let shape = x.shape().to_vec();
        let mut pairs = shape.clone();
        let head_dim = pairs.pop().unwrap_or(0);
        pairs.extend([head_dim / 2, 2]);
        let x32 = x.astype(Dtype::F32).reshape(&pairs);
        let (re, im) = (x32.slice_axis(-1, 0, 1), x32.slice_axis(-1, 1, 2));
        let (cos, sin) = (self.cos.expand_dims(-1), self.sin.expand_dims(-1));
        let rotated = mlx::concatenate(
            &[&(&re * &cos - &im * &sin), &(&re * &sin + &im * &cos)],
            -1,
        );
        rotated.reshape(&shape).astype(x.dtype())
    }
}

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
        let [b, l, d] = [0, 1, 2].map(|axis| x.dim(axis).unwrap_or(0));
        let head_dim = d / self.heads;
        let split_heads = |t: Array| t.reshape(&[b, l, self.heads, head_dim]);
        let norm = |t: Array, weight: &Option<Array>| match weight {
            Some(w) => fast::rms_norm(&t, Some(w), QK_NORM_EPS),
            None => t,
        };
        let q = norm(split_heads(self.to_q.forward(x)), &self.norm_q);
        let k = norm(split_heads(self.to_k.forward(x)), &self.norm_k);
        let v = split_heads(self.to_v.forward(x));
        let heads_first = |t: &Array| t.transpose(&[0, 2, 1, 3]);
        let attended = fast::scaled_dot_product_attention(
            &heads_first(&rope.apply(&q)),
            &heads_first(&rope.apply(&k)),
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
        self.w2
            .forward(&(self.w1.forward(x).silu() * self.w3.forward(x)))
    }
}

/// A transformer block: attention and feed-forward, each between two RMSNorms. Modulated
/// blocks (noise refiner, main layers) scale the normed inputs and gate the residuals with
/// the timestep embedding; caption refiner blocks are not modulated.
#[derive(Module, Clone)]
pub struct Block {
    pub attention: Attention,
    pub feed_forward: FeedForward,
    #[weight("attention_norm1.weight")]
    pub attention_norm1: Array,
    #[weight("attention_norm2.weight")]
    pub attention_norm2: Array,
    #[weight("ffn_norm1.weight")]
    pub ffn_norm1: Array,
    #[weight("ffn_norm2.weight")]
    pub ffn_norm2: Array,
    #[weight("adaLN_modulation.0")]
    pub modulation: Option<Linear>,
    #[weight(skip)]
    pub eps: f32,
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

    fn norm(&self, x: &Array, weight: &Array) -> Array {
        fast::rms_norm(x, Some(weight), self.eps)
    }

    fn attention_input(&self, x: &Array, modulation: Option<&[Array; 4]>) -> Array {
        let normed = self.norm(x, &self.attention_norm1);
        match modulation {
            Some([scale_msa, ..]) => normed * scale_msa,
            None => normed,
        }
    }

    /// The attention's input: the normed, modulated hidden states (TeaCache watches how
    /// much the first main block's changes between steps).
    #[mlx::graph]
    pub fn modulated_input(&self, x: &Array, adaln: Option<&Array>) -> Array {
        self.attention_input(x, self.modulation_params(adaln).as_ref())
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
        let attn_in = self.attention_input(x, modulation.as_ref());
        let attn_out = self.norm(
            &self.attention.forward(&attn_in, mask, rope),
            &self.attention_norm2,
        );
        match modulation {
            Some([_, gate_msa, scale_mlp, gate_mlp]) => {
                let x = x + gate_msa * attn_out;
                let ff_in = self.norm(&x, &self.ffn_norm1) * scale_mlp;
                let ff_out = self.norm(&self.feed_forward.forward(&ff_in), &self.ffn_norm2);
                &x + gate_mlp * ff_out
            }
            None => {
                let x = x + attn_out;
                let ff_in = self.norm(&x, &self.ffn_norm1);
                let ff_out = self.norm(&self.feed_forward.forward(&ff_in), &self.ffn_norm2);
                &x + ff_out
            }
        }
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
    #[weight("0.weight")]
    pub norm: Array,
    #[weight("1")]
    pub linear: Linear,
    #[weight(skip)]
    pub eps: f32,
}

impl CaptionEmbedder {
    #[mlx::graph]
    pub fn forward(&self, cap_feats: &Array) -> Array {
        self.linear
            .forward(&fast::rms_norm(cap_feats, Some(&self.norm), self.eps))
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
            attention_norm1: self.array(&[dim]),
            attention_norm2: self.array(&[dim]),
            ffn_norm1: self.array(&[dim]),
            ffn_norm2: self.array(&[dim]),
            modulation: modulated.then(|| self.linear(4 * dim, c.adaln_dim(), true)),
            eps: c.norm_eps,
        }
    }
}
