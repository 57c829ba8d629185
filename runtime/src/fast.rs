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

/// Rotary embedding of consecutive channel pairs by per-token tables, after an RMSNorm
/// over each head when `norm` gives its weight and epsilon: `x: [B, L, H, D]`, `cos` and
/// `sin` of `[B, L, 1, D]` laid out as `mlx::nn::rope::RopeTable` holds them. Computes
/// `y = rms_norm(x)`, `y · cos + swap_pairs(y) · sin` in float32 and returns `x`'s dtype.
///
/// On a CUDA GPU this is one kernel of ours (a warp per head, reading `x` once and writing
/// once): 32 µs for the Z-Image-Turbo attention's queries on an H200, where MLX's norm,
/// gather and element-wise kernels took 306 µs. Elsewhere (or with `MLX_RS_FUSED_KERNELS=0`)
/// it is composed of MLX operations, with the norm's result rounded to `x`'s dtype before
/// the rotation.
#[track_caller]
pub fn rope_table(x: &Array, cos: &Array, sin: &Array, norm: Option<(&Array, f32)>) -> Array {
    let (weight, eps) = norm.map_or((None, 0.0), |(w, eps)| (Some(w), eps));
    op(
        "rope_table",
        &[Some(x), Some(cos), Some(sin), weight],
        |r, out| {
            // SAFETY: live handles (weight may be null).
            unsafe { sys::mlxs_rope_table(r[0], r[1], r[2], r[3], eps, out) }
        },
    )
}

/// An RMSNorm's weight and epsilon.
pub type Norm<'a> = (&'a Array, f32);

/// The residual stream after a transformer sublayer, one kernel on CUDA GPUs: for the
/// sublayer's output `y: [B, L, D]` and the stream `x`, `x + gate · rms_norm(y)`, with
/// `gate` a per-item modulation of `[B, 1, D]` (or absent).
///
/// The kernel reads each input once (a block per row, its channels held in registers)
/// where MLX runs a norm and an element-wise kernel; elsewhere (other devices, other
/// shapes or dtypes, `MLX_RS_FUSED_KERNELS=0`) it is composed of those.
#[track_caller]
pub fn residual_rms_norm(x: &Array, y: &Array, norm: Norm<'_>, gate: Option<&Array>) -> Array {
    let mut outs = residual_norm_op(Some(x), y, Some(norm), gate, None, None).into_iter();
    outs.next().unwrap_or_else(|| missing_output(y))
}

/// [`residual_rms_norm`] and the next sublayer's input from its result `h`,
/// `rms_norm_next(h) · scale`, in one kernel on CUDA GPUs: `(h, next input)`. `h` is
/// rounded to `y`'s dtype as it is stored, and the next norm reads the rounded value.
#[track_caller]
pub fn residual_rms_norm_then(
    x: &Array,
    y: &Array,
    norm: Norm<'_>,
    gate: Option<&Array>,
    next: Norm<'_>,
    scale: Option<&Array>,
) -> (Array, Array) {
    let mut outs = residual_norm_op(Some(x), y, Some(norm), gate, Some(next), scale).into_iter();
    let h = outs.next().unwrap_or_else(|| missing_output(y));
    let input = outs.next().unwrap_or_else(|| missing_output(y));
    (h, input)
}

/// `rms_norm(x) · scale` (`scale: [B, 1, D]`, a per-item modulation), one kernel on CUDA
/// GPUs.
#[track_caller]
pub fn rms_norm_scaled(x: &Array, norm: Norm<'_>, scale: &Array) -> Array {
    residual_norm_op(None, x, None, None, Some(norm), Some(scale))
        .into_iter()
        .next()
        .unwrap_or_else(|| missing_output(x))
}

#[track_caller]
fn missing_output(like: &Array) -> Array {
    crate::array::invalid("residual_rms_norm", &[like], "MLX returned too few arrays")
}

#[track_caller]
fn residual_norm_op(
    x: Option<&Array>,
    y: &Array,
    norm: Option<Norm<'_>>,
    gate: Option<&Array>,
    next: Option<Norm<'_>>,
    scale: Option<&Array>,
) -> Vec<Array> {
    let (y_weight, y_eps) = norm.map_or((None, 0.0), |(w, e)| (Some(w), e));
    let (out_weight, out_eps) = next.map_or((None, 0.0), |(w, e)| (Some(w), e));
    let slots = [x, Some(y), y_weight, gate, out_weight, scale];
    let present: Vec<&Array> = slots.iter().flatten().copied().collect();
    let outputs = usize::from(x.is_some()) + usize::from(next.is_some());
    crate::array_list::op_list("residual_rms_norm", &present, |r, out| {
        // `r` holds the present slots in order: hand each its handle, null for the rest.
        let mut handles = r.iter().copied();
        let raw = slots.map(|slot| match slot {
            Some(_) => handles.next().unwrap_or(std::ptr::null()),
            None => std::ptr::null(),
        });
        // SAFETY: live handles or null where the shim takes an absent array.
        unsafe {
            sys::mlxs_residual_rms_norm(
                raw[0], raw[1], raw[2], y_eps, raw[3], raw[4], out_eps, raw[5], out,
            )
        }
    })
    .unwrap_or_else(|error| vec![Array::failed(error); outputs])
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
