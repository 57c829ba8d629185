//! transformers' `Qwen3ForCausalLM`: the base model's layers, the final norm and an output
//! head (its own `lm_head`, or the embedding matrix when `tie_word_embeddings`), run
//! against a [`Cache`] of keys and values.
//!
//! The cache is mlx-lm's `KVCache`: per layer, keys and values `[batch, kv_heads, capacity,
//! head_dim]` preallocated in steps of [`CACHE_STEP`] positions and filled in place with
//! `slice_update`. The position to write at is an array input, so one compiled graph of
//! fixed shapes serves every decoding step until the cache grows: one trace per capacity,
//! not one per token. Attention covers the whole capacity under a mask built from the
//! position, which hides what has not been written yet.

use mlx::nn::Linear;
use mlx::{Array, Dtype, Module};

use crate::model::{KvCache, Qwen3Model};
use crate::{Qwen3Error, Result};

/// Positions a cache grows by when it is full: mlx-lm's `KVCache.step`. Each capacity is
/// one more trace of the decoding graph; a larger step wastes more attention on empty
/// positions.
pub const CACHE_STEP: i32 = 256;

/// Prompts are padded to a multiple of this many tokens, so that prompts of different
/// lengths share prefill graphs (a server sees at most 64 prefill shapes per capacity).
/// The padding's keys land past the cache's length, where the mask hides them and decoding
/// overwrites them. A trace costs far less than a Qwen3-0.6B prefill on the CPU, while
/// padding costs its share of the prompt: hence a small multiple.
const PREFILL_MULTIPLE: usize = 8;

/// The causal language model. Weight paths are transformers' (`model.layers.0...`,
/// `lm_head.weight`); `lm_head` is `None` when the output head is the embedding matrix.
#[derive(Module, Clone)]
pub struct Qwen3ForCausalLM {
    pub model: Qwen3Model,
    pub lm_head: Option<Linear>,
}

impl std::fmt::Debug for Qwen3ForCausalLM {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Qwen3ForCausalLM")
            .field("model", &self.model)
            .field("tied", &self.lm_head.is_none())
            .finish()
    }
}

/// The keys and values of every layer, and how many positions hold real tokens.
#[derive(Clone)]
pub struct Cache {
    pub layers: Vec<KvCache>,
    len: usize,
}

impl Cache {
    /// Positions written so far (the next token's position).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions allocated.
    pub fn capacity(&self) -> usize {
        self.layers
            .first()
            .map_or(0, |layer| layer.keys.dim(2).unwrap_or(0) as usize)
    }

    /// The cache's bytes.
    pub fn nbytes(&self) -> usize {
        Module::nbytes(&self.layers)
    }

    /// Grows the cache by whole [`CACHE_STEP`]s until `tokens` more positions fit (lazy
    /// zeros appended, as mlx-lm's `KVCache.update_and_fetch` does).
    fn reserve(&mut self, tokens: usize) -> Result<()> {
        let needed = self.len + tokens;
        let capacity = self.capacity();
        if needed <= capacity {
            return Ok(());
        }
        let step = CACHE_STEP as usize;
        let grown = needed.div_ceil(step) * step;
        let extra = i32::try_from(grown - capacity)
            .ok()
            .filter(|_| i32::try_from(grown).is_ok())
            .ok_or_else(|| {
                Qwen3Error::Input(format!("{needed} positions do not fit a KV cache"))
            })?;
        for layer in &mut self.layers {
            let grow = |a: &Array| {
                // A cache's arrays are 4-D: `new_cache` makes them so, `forward` checks.
                let [b, h, _, d] = a.dims();
                let zeros = Array::zeros(&[b, h, extra, d], a.dtype());
                if capacity == 0 {
                    zeros
                } else {
                    mlx::concatenate(&[a, &zeros], 2)
                }
            };
            *layer = KvCache {
                keys: grow(&layer.keys),
                values: grow(&layer.values),
            };
        }
        Ok(())
    }
}

impl Qwen3ForCausalLM {
    pub fn config(&self) -> &crate::Qwen3Config {
        &self.model.config
    }

    /// The dtype the model computes in.
    pub fn dtype(&self) -> Dtype {
        self.model.dtype()
    }

    /// An empty cache for `batch` sequences (nothing is allocated until the first tokens).
    pub fn new_cache(&self, batch: i32) -> Cache {
        let c = &self.model.config;
        let empty = || Array::zeros(&[batch, c.num_key_value_heads, 0, c.head_dim], self.dtype());
        Cache {
            layers: self
                .model
                .layers
                .iter()
                .map(|_| KvCache {
                    keys: empty(),
                    values: empty(),
                })
                .collect(),
            len: 0,
        }
    }

    /// Runs `ids: [batch, tokens]` (integers in the vocabulary) at the cache's position,
    /// writing their keys and values into it, and returns the logits of the last token,
    /// `[batch, vocab]` float32 (lazy). The ids are checked first, which evaluates them.
    pub fn forward(&self, ids: &Array, cache: &mut Cache) -> Result<Array> {
        self.check_whole()?;
        let ids = self.model.checked_ids(ids)?;
        let [batch, _] = ids.dims();
        self.check_cache(cache, batch)?;
        let logits = self.forward_unchecked(&ids, cache)?;
        logits.check()?;
        Ok(logits)
    }

    /// A cache of this model's layout for `batch` (its fields are public, so it may have
    /// been built by hand): growing and writing it rely on that.
    fn check_cache(&self, cache: &Cache, batch: i32) -> Result<()> {
        let c = &self.model.config;
        let capacity = cache.capacity() as i32;
        let expected = [batch, c.num_key_value_heads, capacity, c.head_dim];
        let fits = |a: &Array| a.shape() == expected && a.dtype() == self.dtype();
        if cache.layers.len() != self.model.layers.len()
            || !cache
                .layers
                .iter()
                .all(|l| fits(&l.keys) && fits(&l.values))
            || cache.len > cache.capacity()
        {
            return Err(Qwen3Error::Input(format!(
                "the cache does not fit the model: expected {} layers of {} {expected:?} \
                 holding at most {capacity} positions",
                self.model.layers.len(),
                self.dtype()
            )));
        }
        Ok(())
    }

    /// A model loaded with only its first layers (see [`crate::LoadOptions`]) would
    /// silently skip the others.
    pub(crate) fn check_whole(&self) -> Result<()> {
        let all = self.model.config.num_hidden_layers as usize;
        if self.model.layers.len() != all {
            return Err(Qwen3Error::Input(format!(
                "the model was loaded with {} of its {all} layers; a causal LM runs them all",
                self.model.layers.len()
            )));
        }
        Ok(())
    }

    /// [`forward`](Self::forward) without checking the ids, and lazy throughout: the
    /// decoding loop feeds it the sampler's tokens, which are in the vocabulary by
    /// construction, and must not evaluate anything itself.
    pub(crate) fn forward_unchecked(&self, ids: &Array, cache: &mut Cache) -> Result<Array> {
        let [_, len] = ids.dims();
        let len = len as usize;
        // One token needs no padding: decoding steps keep shape [batch, 1].
        let padded = if len == 1 {
            1
        } else {
            len.div_ceil(PREFILL_MULTIPLE) * PREFILL_MULTIPLE
        };
        cache.reserve(padded)?;
        // Token 0 pads: any id in the vocabulary does.
        let ids = if padded > len {
            ids.pad(&[(0, 0), (0, (padded - len) as i32)], 0)
        } else {
            ids.clone()
        };
        // `reserve` bounded len + padded by i32::MAX.
        let offset = Array::scalar(cache.len as i32);
        let last = Array::from_slice(&[len as i32 - 1], &[1]);
        let (logits, kv) = self.logits_graph(&ids, &cache.layers, &offset, &last);
        let mut kv = kv.into_iter();
        for layer in &mut cache.layers {
            if let (Some(keys), Some(values)) = (kv.next(), kv.next()) {
                *layer = KvCache { keys, values };
            }
        }
        cache.len += len;
        Ok(logits)
    }

    /// The logits at index `last` of `ids` and every layer's new keys and values.
    #[mlx::graph]
    fn logits_graph(
        &self,
        ids: &Array,
        caches: &Vec<KvCache>,
        offset: &Array,
        last: &Array,
    ) -> (Array, Vec<Array>) {
        let [_, tokens] = ids.dims();
        let capacity = caches.first().and_then(|c| c.keys.dim(2)).unwrap_or(0);
        // Query i (at position offset + i) sees keys at positions up to its own.
        let keys = Array::arange(0.0, f64::from(capacity), 1.0, Dtype::I32).reshape(&[1, capacity]);
        let queries =
            (Array::arange(0.0, f64::from(tokens), 1.0, Dtype::I32) + offset).reshape(&[tokens, 1]);
        let mask = keys.less_equal(&queries);
        let mut h = self.model.embed_tokens.forward(ids);
        let mut kv = Vec::with_capacity(2 * caches.len());
        for (layer, cache) in self.model.layers.iter().zip(caches) {
            let (out, k, v) = layer.forward_cached(&h, cache, offset, &mask);
            h = out;
            kv.extend([k, v]);
        }
        let h = self.model.norm.forward(&h.take(last, 1));
        let logits = match &self.lm_head {
            Some(head) => head.forward(&h),
            None => self.model.embed_tokens.as_linear(&h),
        };
        let [b, _, vocab] = logits.dims();
        (logits.reshape(&[b, vocab]).astype(Dtype::F32), kv)
    }
}
