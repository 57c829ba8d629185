//! MLX's fused kernels for the building blocks of transformers.

use std::ffi::CStr;

use crate::array::op;
use crate::sys;
use crate::Array;

/// `x / sqrt(mean(x², -1) + eps) * weight`, over the last axis.
#[track_caller]
pub fn rms_norm(x: &Array, weight: Option<&Array>, eps: f32) -> Array {
    op("rms_norm", &[Some(x), weight], |r, out| {
        // SAFETY: live handles (weight may be null).
        unsafe { sys::mlxs_rms_norm(r[0], r[1], eps, out) }
    })
}

/// `(x - mean) / sqrt(var + eps) * weight + bias`, over the last axis.
#[track_caller]
pub fn layer_norm(x: &Array, weight: Option<&Array>, bias: Option<&Array>, eps: f32) -> Array {
    op("layer_norm", &[Some(x), weight, bias], |r, out| {
        // SAFETY: live handles (weight and bias may be null).
        unsafe { sys::mlxs_layer_norm(r[0], r[1], r[2], eps, out) }
    })
}

/// Rotary position embedding of the first `dims` features of the last axis, for
/// positions `offset, offset + 1, ...` along the second-to-last axis.
#[derive(Clone, Copy, Debug)]
pub struct Rope<'a> {
    /// Features rotated (even).
    pub dims: i32,
    /// `true`: rotate consecutive pairs `(x0, x1), (x2, x3), ...`; `false`: rotate
    /// `x[i]` with `x[i + dims / 2]` (the layout of most checkpoints).
    pub traditional: bool,
    /// Frequencies `base^(-2i / dims)`; ignored when `freqs` is given.
    pub base: f32,
    /// Positions are multiplied by this.
    pub scale: f32,
    /// The first position.
    pub offset: i32,
    /// Explicit per-pair frequencies (`[dims / 2]`), instead of `base`.
    pub freqs: Option<&'a Array>,
}

impl Rope<'_> {
    /// The usual setup: non-traditional, base 10 000, scale 1, offset 0.
    pub fn new(dims: i32) -> Rope<'static> {
        Rope {
            dims,
            traditional: false,
            base: 10_000.0,
            scale: 1.0,
            offset: 0,
            freqs: None,
        }
    }
}

/// Applies [`Rope`] to `x` (`[..., seq, features]`).
#[track_caller]
pub fn rope(x: &Array, rope: Rope<'_>) -> Array {
    op("rope", &[Some(x), rope.freqs], |r, out| {
        // SAFETY: live handles (freqs may be null).
        unsafe {
            sys::mlxs_rope(
                r[0],
                rope.dims,
                i32::from(rope.traditional),
                i32::from(rope.freqs.is_none()),
                rope.base,
                rope.scale,
                rope.offset,
                r[1],
                out,
            )
        }
    })
}

/// [`rope`] with the first position an integer array (a scalar, or one per batch item)
/// instead of `rope.offset`: a compiled graph then serves every position, as a decoding
/// step with a KV cache needs (a static offset would trace once per token).
#[track_caller]
pub fn rope_at(x: &Array, rope: Rope<'_>, offset: &Array) -> Array {
    op("rope", &[Some(x), Some(offset), rope.freqs], |r, out| {
        // SAFETY: live handles (freqs may be null).
        unsafe {
            sys::mlxs_rope_dynamic(
                r[0],
                rope.dims,
                i32::from(rope.traditional),
                i32::from(rope.freqs.is_none()),
                rope.base,
                rope.scale,
                r[1],
                r[2],
                out,
            )
        }
    })
}

/// The mask of [`scaled_dot_product_attention`].
#[derive(Clone, Copy, Debug)]
pub enum Mask<'a> {
    /// Every query sees every key.
    None,
    /// Query `i` sees keys `0..=i` (aligned to the end when there are more keys).
    Causal,
    /// A boolean mask (true = attend) or an additive float mask, broadcastable to
    /// `[batch, heads, queries, keys]`.
    Array(&'a Array),
}

/// `softmax(q kᵀ * scale + mask) v` for `q: [B, H, Lq, D]`, `k, v: [B, H_kv, Lk, D]`
/// (grouped-query attention when `H_kv` divides `H`).
#[track_caller]
pub fn scaled_dot_product_attention(
    q: &Array,
    k: &Array,
    v: &Array,
    scale: f32,
    mask: Mask<'_>,
) -> Array {
    let (mode, mask): (&CStr, Option<&Array>) = match mask {
        Mask::None => (c"", None),
        Mask::Causal => (c"causal", None),
        Mask::Array(m) => (c"", Some(m)),
    };
    op(
        "scaled_dot_product_attention",
        &[Some(q), Some(k), Some(v), mask],
        |r, out| {
            // SAFETY: live handles (mask may be null); static NUL-terminated mode.
            unsafe { sys::mlxs_sdpa(r[0], r[1], r[2], scale, mode.as_ptr(), r[3], out) }
        },
    )
}
