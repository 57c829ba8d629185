//! Helpers around [`crate::fast::scaled_dot_product_attention`]: moving heads between the
//! feature axis and an axis of their own, and key masks.

use crate::Array;

/// `[batch, tokens, heads · head_dim]` to `[batch, heads, tokens, head_dim]`, the layout
/// attention takes.
#[track_caller]
pub fn split_heads(x: &Array, heads: i32) -> Array {
    let [b, l, d] = x.dims();
    x.reshape(&[b, l, heads, d / heads.max(1)])
        .transpose(&[0, 2, 1, 3])
}

/// The inverse of [`split_heads`].
#[track_caller]
pub fn merge_heads(x: &Array) -> Array {
    let [b, h, l, d] = x.dims();
    x.transpose(&[0, 2, 1, 3]).reshape(&[b, l, h * d])
}

/// A boolean key mask `[batch, 1, 1, len]`, true for the first `lens[i]` keys of item
/// `i`: what batches of right-padded sequences attend with.
pub fn key_padding_mask(lens: &[i32], len: i32) -> Array {
    let valid: Vec<bool> = lens
        .iter()
        .flat_map(|&n| (0..len).map(move |j| j < n))
        .collect();
    Array::from_slice(&valid, &[lens.len() as i32, 1, 1, len])
}
