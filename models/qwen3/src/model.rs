//! transformers' `Qwen3Model`: token embeddings, pre-norm decoder layers (grouped-query
//! attention with per-head RMSNorm on queries and keys, SwiGLU MLP) and a final RMSNorm.
//! Field paths are transformers' weight names (without the `model.` prefix of
//! `Qwen3ForCausalLM`).
//!
//! [`Qwen3Model::hidden_states`] and [`Qwen3Model::forward`] attend causally over the whole
//! input from position 0 (the text encoder's case); the `*_cached` graphs run tokens at a
//! position given as an array against a [`KvCache`] per layer: the causal LM's case
//! ([`crate::causal_lm`]).

use mlx::fast::{self, Mask, Rope};
use mlx::nn::attention::{merge_heads, split_heads};
use mlx::nn::{rope, Dense, Embedding, Linear, RmsNorm};
use mlx::{Array, Dtype, Module};

use crate::config::Qwen3Config;
use crate::{Qwen3Error, Result};

/// Self-attention: `q_proj`/`k_proj`/`v_proj`/`o_proj` without biases, RMSNorm of each
/// query and key head over `head_dim`, half-split RoPE, causal grouped-query attention.
#[derive(Module, Clone)]
pub struct Attention {
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub q_norm: RmsNorm,
    pub k_norm: RmsNorm,
    #[weight(skip)]
    pub heads: i32,
    #[weight(skip)]
    pub kv_heads: i32,
    #[weight(skip)]
    pub rope_theta: f32,
}

impl Attention {
    /// Queries, keys and values of `x: [batch, tokens, hidden]` as `[batch, heads, tokens,
    /// head_dim]`, queries and keys normed per head (before RoPE).
    fn project(&self, x: &Array) -> [Array; 3] {
        let [q, k, v] = Linear::forward_each([&self.q_proj, &self.k_proj, &self.v_proj], x);
        [
            self.q_norm.forward(&split_heads(&q, self.heads)),
            self.k_norm.forward(&split_heads(&k, self.kv_heads)),
            split_heads(&v, self.kv_heads),
        ]
    }

    /// `x: [batch, tokens, hidden]`.
    #[mlx::graph]
    pub fn forward(&self, x: &Array) -> Array {
        let [q, k, v] = self.project(x);
        let [.., head_dim] = q.dims::<4>();
        // MLX's kernel repeats each kv head for its group of query heads itself.
        let attended = fast::scaled_dot_product_attention(
            &rope::rotate(&q, self.rope_theta, 0),
            &rope::rotate(&k, self.rope_theta, 0),
            &v,
            1.0 / (head_dim as f32).sqrt(),
            Mask::Causal,
        );
        self.o_proj.forward(&merge_heads(&attended))
    }

    /// `x: [batch, tokens, hidden]` at positions `offset..` (an int32 scalar), attending to
    /// the cache's keys where `mask` (`[tokens, capacity]`, true = attend) allows. Returns
    /// the output and the cache with this call's keys and values written at `offset`.
    #[mlx::graph]
    pub fn forward_cached(
        &self,
        x: &Array,
        cache: &KvCache,
        offset: &Array,
        mask: &Array,
    ) -> (Array, Array, Array) {
        let [q, k, v] = self.project(x);
        let [.., head_dim] = q.dims::<4>();
        let rope = Rope {
            base: self.rope_theta,
            ..Rope::new(head_dim)
        };
        let start = offset.reshape(&[1]);
        let keys = cache
            .keys
            .slice_update_at(&fast::rope_at(&k, rope, offset), &start, &[2]);
        let values = cache.values.slice_update_at(&v, &start, &[2]);
        let attended = fast::scaled_dot_product_attention(
            &fast::rope_at(&q, rope, offset),
            &keys,
            &values,
            1.0 / (head_dim as f32).sqrt(),
            Mask::Array(mask),
        );
        (self.o_proj.forward(&merge_heads(&attended)), keys, values)
    }
}

/// One layer's keys and values in mlx-lm's `KVCache` layout,
/// `[batch, kv_heads, capacity, head_dim]`, RoPE already applied to the keys. Positions past
/// what has been written hold zeros or stale values; the attention mask hides them.
#[derive(Module, Clone)]
pub struct KvCache {
    pub keys: Array,
    pub values: Array,
}

/// `down_proj(silu(gate_proj(x)) · up_proj(x))`.
#[derive(Module, Clone)]
pub struct Mlp {
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

impl Mlp {
    #[mlx::graph]
    pub fn forward(&self, x: &Array) -> Array {
        let [gate, up] = Linear::forward_each([&self.gate_proj, &self.up_proj], x);
        self.down_proj.forward_swiglu(&gate, &up)
    }
}

/// A pre-norm decoder layer: `x + attn(norm(x))`, then `x + mlp(norm(x))`.
#[derive(Module, Clone)]
pub struct DecoderLayer {
    pub self_attn: Attention,
    pub mlp: Mlp,
    pub input_layernorm: RmsNorm,
    pub post_attention_layernorm: RmsNorm,
}

impl DecoderLayer {
    /// The linear layers with their checkpoint paths under the layer.
    pub fn linears_mut(&mut self) -> [(&'static str, &mut Linear); 7] {
        let (attn, mlp) = (&mut self.self_attn, &mut self.mlp);
        [
            ("self_attn.q_proj", &mut attn.q_proj),
            ("self_attn.k_proj", &mut attn.k_proj),
            ("self_attn.v_proj", &mut attn.v_proj),
            ("self_attn.o_proj", &mut attn.o_proj),
            ("mlp.gate_proj", &mut mlp.gate_proj),
            ("mlp.up_proj", &mut mlp.up_proj),
            ("mlp.down_proj", &mut mlp.down_proj),
        ]
    }

    #[mlx::graph]
    pub fn forward(&self, x: &Array) -> Array {
        let h = x + self.self_attn.forward(&self.input_layernorm.forward(x));
        &h + self.mlp.forward(&self.post_attention_layernorm.forward(&h))
    }

    /// [`forward`](DecoderLayer::forward) against a cache (see
    /// [`Attention::forward_cached`]): the output and the layer's new keys and values.
    #[mlx::graph]
    pub fn forward_cached(
        &self,
        x: &Array,
        cache: &KvCache,
        offset: &Array,
        mask: &Array,
    ) -> (Array, Array, Array) {
        let (attended, keys, values) =
            self.self_attn
                .forward_cached(&self.input_layernorm.forward(x), cache, offset, mask);
        let h = x + attended;
        let out = &h + self.mlp.forward(&self.post_attention_layernorm.forward(&h));
        (out, keys, values)
    }
}

/// Qwen3. `layers` may hold fewer layers than `config.num_hidden_layers` when only the
/// first ones were loaded (see [`crate::LoadOptions`]): enough for
/// [`hidden_states`](Qwen3Model::hidden_states) up to that depth, not for
/// [`forward`](Qwen3Model::forward).
#[derive(Module, Clone)]
pub struct Qwen3Model {
    pub embed_tokens: Embedding,
    pub layers: Vec<DecoderLayer>,
    pub norm: RmsNorm,
    #[weight(skip)]
    pub config: Qwen3Config,
}

impl std::fmt::Debug for Qwen3Model {
    /// The configuration and what was loaded, not the weights.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qwen3Model")
            .field("config", &self.config)
            .field("layers_loaded", &self.layers.len())
            .field("dtype", &self.dtype())
            .finish_non_exhaustive()
    }
}

/// Token counts are padded up to a multiple of this before the layers run, so that
/// prompts of different lengths share compiled graphs (one trace per 32 lengths). The
/// attention is causal, so real tokens never see the padding: their outputs are those of
/// the unpadded sequence.
const SEQ_MULTIPLE: i64 = 32;

impl Qwen3Model {
    /// Every linear layer with its checkpoint path: the ones quantization takes (the
    /// embeddings and norms are not linear layers).
    pub fn linears_mut(&mut self) -> Vec<(String, &mut Linear)> {
        self.layers
            .iter_mut()
            .enumerate()
            .flat_map(|(i, layer)| {
                layer
                    .linears_mut()
                    .map(|(path, linear)| (format!("layers.{i}.{path}"), linear))
            })
            .collect()
    }

    /// A model of `config`'s shapes with the first `layers` decoder layers, zero weights
    /// (ones for norms) in `dtype`, ready to be loaded.
    pub fn zeros(config: &Qwen3Config, layers: usize, dtype: Dtype) -> Qwen3Model {
        let c = config;
        let linear = |out: i32, inp: i32| {
            Linear::Dense(Dense {
                weight: Array::zeros(&[out, inp], dtype),
                bias: None,
            })
        };
        let norm = |dim: i32| RmsNorm::ones(dim, c.rms_norm_eps as f32, dtype);
        let (q_dim, kv_dim) = (
            c.num_attention_heads * c.head_dim,
            c.num_key_value_heads * c.head_dim,
        );
        let layer = || DecoderLayer {
            self_attn: Attention {
                q_proj: linear(q_dim, c.hidden_size),
                k_proj: linear(kv_dim, c.hidden_size),
                v_proj: linear(kv_dim, c.hidden_size),
                o_proj: linear(c.hidden_size, q_dim),
                q_norm: norm(c.head_dim),
                k_norm: norm(c.head_dim),
                heads: c.num_attention_heads,
                kv_heads: c.num_key_value_heads,
                rope_theta: c.rope_theta as f32,
            },
            mlp: Mlp {
                gate_proj: linear(c.intermediate_size, c.hidden_size),
                up_proj: linear(c.intermediate_size, c.hidden_size),
                down_proj: linear(c.hidden_size, c.intermediate_size),
            },
            input_layernorm: norm(c.hidden_size),
            post_attention_layernorm: norm(c.hidden_size),
        };
        Qwen3Model {
            embed_tokens: Embedding::zeros(c.vocab_size, c.hidden_size, dtype),
            layers: (0..layers).map(|_| layer()).collect(),
            norm: norm(c.hidden_size),
            config: config.clone(),
        }
    }

    /// The dtype the model computes in (its weights' dtype).
    pub fn dtype(&self) -> Dtype {
        self.embed_tokens.weight.dtype()
    }

    /// How many layers Z-Image's text encoder runs (`hidden_states[-2]`): all but the
    /// last.
    pub fn encoder_depth(&self) -> usize {
        self.config.encoder_depth()
    }

    /// The output of the first `layers` decoder layers, `[batch, tokens, hidden]` in the
    /// model's dtype, for `input_ids: [batch, tokens]` (integers): what transformers
    /// returns as `hidden_states[layers]` (`0` is the embeddings; no final norm).
    ///
    /// Rows may be right-padded with any valid token: attention is causal, so the real
    /// tokens' outputs do not depend on what follows them.
    pub fn hidden_states(&self, input_ids: &Array, layers: usize) -> Result<Array> {
        if layers > self.layers.len() {
            return Err(Qwen3Error::Input(format!(
                "hidden states after {layers} layers asked of a model with {} loaded",
                self.layers.len()
            )));
        }
        self.run(input_ids, layers, false)
    }

    /// The final norm's output after every layer, `[batch, tokens, hidden]`: what
    /// transformers returns as `last_hidden_state`.
    pub fn forward(&self, input_ids: &Array) -> Result<Array> {
        let all = self.config.num_hidden_layers as usize;
        if self.layers.len() != all {
            return Err(Qwen3Error::Input(format!(
                "the model was loaded with {} of its {all} layers; load all of them to run it whole",
                self.layers.len()
            )));
        }
        self.run(input_ids, all, true)
    }

    /// Checks the ids, pads the sequence to a multiple of [`SEQ_MULTIPLE`], runs the graph
    /// and cuts the padding off again.
    fn run(&self, input_ids: &Array, layers: usize, final_norm: bool) -> Result<Array> {
        let ids = self.checked_ids(input_ids)?;
        let [_, len] = ids.dims();
        let multiple = (i64::from(len) + SEQ_MULTIPLE - 1) / SEQ_MULTIPLE * SEQ_MULTIPLE;
        let padded_len = i32::try_from(multiple)
            .map_err(|_| Qwen3Error::Input(format!("{len} tokens are too many")))?;
        // Token 0 pads: any id in the vocabulary does (vocab_size >= 1).
        let padded = ids.pad(&[(0, 0), (0, padded_len - len)], 0);
        let out = self
            .layers_graph(&padded, layers, final_norm)
            .slice_axis(1, 0, len);
        out.check()?;
        Ok(out)
    }

    /// `input_ids` as `[batch, tokens]` int32, checked: token ids outside the vocabulary
    /// would make the embedding lookup read out of bounds.
    pub(crate) fn checked_ids(&self, input_ids: &Array) -> Result<Array> {
        input_ids.check()?;
        let shape = input_ids.shape();
        if shape.len() != 2 || shape[1] == 0 || !input_ids.dtype().is_integer() {
            return Err(Qwen3Error::Input(format!(
                "input ids must be integers of shape [batch, tokens] with at least one token, found {} {shape:?}",
                input_ids.dtype()
            )));
        }
        if shape[0] == 0 {
            return Err(Qwen3Error::Input("input ids hold an empty batch".into()));
        }
        let wide = input_ids.astype(Dtype::I64);
        let (lo, hi) = (wide.min(mlx::ALL, false), wide.max(mlx::ALL, false));
        mlx::eval([&lo, &hi])?; // one evaluation for both bounds
        let (lo, hi) = (lo.item::<i64>()?, hi.item::<i64>()?);
        let vocab = i64::from(self.config.vocab_size);
        if lo < 0 || hi >= vocab {
            let bad = if lo < 0 { lo } else { hi };
            return Err(Qwen3Error::Input(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        Ok(input_ids.astype(Dtype::I32))
    }

    #[mlx::graph]
    fn layers_graph(&self, input_ids: &Array, layers: usize, final_norm: bool) -> Array {
        let mut h = self.embed_tokens.forward(input_ids);
        for layer in &self.layers[..layers] {
            h = layer.forward(&h);
        }
        if final_norm {
            self.norm.forward(&h)
        } else {
            h
        }
    }
}
