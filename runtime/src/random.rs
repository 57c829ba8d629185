//! Reproducible random numbers from explicit keys (MLX's counter-based generator).
//!
//! A key is a `uint32[2]` array; the same key always gives the same numbers. Derive
//! independent keys with [`split`] instead of reusing one.

use crate::array::op;
use crate::sys;
use crate::{Array, Dtype};

/// The key for `seed`.
#[track_caller]
pub fn key(seed: u64) -> Array {
    op("random::key", &[], |_, out| {
        // SAFETY: new handle out.
        unsafe { sys::mlxs_random_key(seed, out) }
    })
}

/// `num` new keys derived from `key`.
#[track_caller]
pub fn split(key: &Array, num: i32) -> Vec<Array> {
    let keys = op("random::split", &[Some(key)], |r, out| {
        // SAFETY: live handle.
        unsafe { sys::mlxs_random_split(r[0], num, out) }
    });
    (0..num.max(1))
        .map(|i| keys.slice_axis(0, i, i + 1).squeeze(0))
        .collect()
}

/// Standard normal samples (mean 0, standard deviation 1).
#[track_caller]
pub fn normal(shape: &[i32], dtype: Dtype, key: &Array) -> Array {
    op("random::normal", &[Some(key)], |r, out| {
        // SAFETY: live handle; `shape.len()` dims.
        unsafe {
            sys::mlxs_random_normal(
                shape.as_ptr(),
                shape.len(),
                dtype.code(),
                0.0,
                1.0,
                r[0],
                out,
            )
        }
    })
}

/// Uniform samples in `[low, high)`.
#[track_caller]
pub fn uniform(low: f64, high: f64, shape: &[i32], dtype: Dtype, key: &Array) -> Array {
    let bounds_dtype = if dtype.is_float() { dtype } else { Dtype::F32 };
    let low = crate::Scalar::Float(low).to_array(bounds_dtype);
    let high = crate::Scalar::Float(high).to_array(bounds_dtype);
    op(
        "random::uniform",
        &[Some(&low), Some(&high), Some(key)],
        |r, out| {
            // SAFETY: live handles; `shape.len()` dims.
            unsafe {
                sys::mlxs_random_uniform(
                    r[0],
                    r[1],
                    shape.as_ptr(),
                    shape.len(),
                    dtype.code(),
                    r[2],
                    out,
                )
            }
        },
    )
}
