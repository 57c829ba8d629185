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

/// Per-token rotary tables for interleaved pairs: `cos` and `sin` of
/// `[batch, tokens, 1, head_dim / 2]` angles, one per consecutive pair of channels.
#[derive(Module, Clone)]
pub struct RopeTable {
    pub cos: Array,
    pub sin: Array,
}

impl RopeTable {
    /// Rotates consecutive channel pairs of `x: [batch, tokens, heads, head_dim]` in float32
    /// (as PyTorch code does through complex64) and casts back to `x`'s dtype.
    #[crate::graph]
    pub fn apply(&self, x: &Array) -> Array {
        let [b, l, h, d] = x.dims();
        let x32 = x.astype(Dtype::F32).reshape(&[b, l, h, d / 2, 2]);
        let (re, im) = (x32.slice_axis(-1, 0, 1), x32.slice_axis(-1, 1, 2));
        let (cos, sin) = (self.cos.expand_dims(-1), self.sin.expand_dims(-1));
        let rotated = crate::concatenate(
            &[&(&re * &cos - &im * &sin), &(&re * &sin + &im * &cos)],
            -1,
        );
        rotated.reshape(&[b, l, h, d]).astype(x.dtype())
    }
}
