//! Rotary position embeddings.
//!
//! Two layouts exist in checkpoints, and MLX's fused kernel ([`crate::fast::rope`]) does
//! both for positions along the sequence axis:
//!
//! - half-split (`rotate_half`, Llama/Qwen): feature `i` turns with feature `i + d/2`;
//!   [`rotate`] applies it with a base (`rope_theta`) and a first position;
//! - interleaved (complex pairs, diffusers' multi-axis RoPE): features `2i` and `2i + 1`
//!   turn together, by an angle of its own per token; [`RopeTable`] holds precomputed
//!   angles for that.

use crate::fast::{self, Rope};
use crate::{Array, Dtype, Module};

/// Half-split RoPE over the whole last axis of `x: [batch, heads, tokens, head_dim]` for
/// positions `offset, offset + 1, ...`, with frequencies `base^(-2i / head_dim)`.
#[track_caller]
pub fn rotate(x: &Array, base: f32, offset: i32) -> Array {
    let [.., head_dim] = x.dims::<4>();
    fast::rope(
        x,
        Rope {
            base,
            offset,
            ..Rope::new(head_dim)
        },
    )
}

/// Per-token rotary tables for interleaved pairs, laid out for one fused pass: `cos` and
/// `sin` of `[batch, tokens, 1, head_dim]`, each pair's angle repeated over its two
/// channels, `sin` negated on the first of them. Then
/// `rotate(x) = x · cos + swap_pairs(x) · sin`: a gather and one element-wise kernel, where
/// slicing the pairs apart and concatenating them back costs several times more on a GPU.
#[derive(Module, Clone)]
pub struct RopeTable {
    pub cos: Array,
    pub sin: Array,
}

impl RopeTable {
    /// The table of per-pair angles given by their cosines and sines, row-major
    /// `[batch, tokens, head_dim / 2]`.
    pub fn from_pairs(cos: &[f32], sin: &[f32], batch: i32, tokens: i32) -> RopeTable {
        let pairs = cos.len() as i32 / (batch * tokens).max(1);
        let mut full_cos = Vec::with_capacity(2 * cos.len());
        let mut full_sin = Vec::with_capacity(2 * sin.len());
        for (&c, &s) in cos.iter().zip(sin) {
            full_cos.extend([c, c]);
            full_sin.extend([-s, s]);
        }
        let shape = [batch, tokens, 1, 2 * pairs];
        RopeTable {
            cos: Array::from_slice(&full_cos, &shape),
            sin: Array::from_slice(&full_sin, &shape),
        }
    }

    /// Rotates consecutive channel pairs of `x: [batch, tokens, heads, head_dim]` in float32
    /// (as PyTorch code does through complex64) and casts back to `x`'s dtype.
    #[crate::graph]
    pub fn apply(&self, x: &Array) -> Array {
        let [.., d] = x.dims::<4>();
        let swap: Vec<i32> = (0..d).map(|i| i ^ 1).collect();
        let swapped = x.take(&Array::from_slice(&swap, &[d]), -1);
        let x32 = x.astype(Dtype::F32);
        (x32 * &self.cos + swapped.astype(Dtype::F32) * &self.sin).astype(x.dtype())
    }
}
