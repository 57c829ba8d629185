//! Making arrays: from Rust data, constants, ranges.

use std::panic::Location;

use half::{bf16, f16};

use crate::array::op;
use crate::sys;
use crate::{Array, Dtype, Element, Error};

/// A Rust number used as an operand (`&x * 2.0`, `x.maximum(0.0)`).
///
/// Scalars are weakly typed, as in MLX: a float scalar takes a float array's dtype (so
/// `bf16_array * 0.5` stays bfloat16), an integer scalar takes any numeric array's dtype,
/// and a float scalar with an integer array makes a `float32` operand.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Scalar {
    Bool(bool),
    Int(i64),
    Float(f64),
}

macro_rules! scalar_from {
    ($variant:ident: $($t:ty),*) => {$(
        impl From<$t> for Scalar {
            fn from(v: $t) -> Scalar {
                Scalar::$variant(v.into())
            }
        }
    )*};
}
scalar_from!(Int: i8, i16, i32, i64, u8, u16, u32);
scalar_from!(Float: f32, f64);
scalar_from!(Bool: bool);

impl Scalar {
    /// The dtype this scalar takes next to an array of dtype `like`.
    pub fn dtype_next_to(self, like: Dtype) -> Dtype {
        match self {
            Scalar::Bool(_) => Dtype::Bool,
            Scalar::Int(_) if like.is_float() || like.is_integer() => like,
            Scalar::Int(_) => Dtype::I32,
            Scalar::Float(_) if like.is_float() => like,
            Scalar::Float(_) => Dtype::F32,
        }
    }

    /// A zero-dimensional array of this value in `dtype` (converted as Rust's `as` does).
    #[track_caller]
    pub fn to_array(self, dtype: Dtype) -> Array {
        let f = match self {
            Scalar::Bool(b) => f64::from(u8::from(b)),
            Scalar::Int(i) => i as f64,
            Scalar::Float(x) => x,
        };
        // Integers go through i64 so that large values convert exactly.
        let i = match self {
            Scalar::Bool(b) => i64::from(b),
            Scalar::Int(i) => i,
            Scalar::Float(x) => x as i64,
        };
        match dtype {
            Dtype::Bool => Array::scalar(f != 0.0),
            Dtype::U8 => Array::scalar(i as u8),
            Dtype::U16 => Array::scalar(i as u16),
            Dtype::U32 => Array::scalar(i as u32),
            Dtype::U64 => Array::scalar(i as u64),
            Dtype::I8 => Array::scalar(i as i8),
            Dtype::I16 => Array::scalar(i as i16),
            Dtype::I32 => Array::scalar(i as i32),
            Dtype::I64 => Array::scalar(i),
            Dtype::F16 => Array::scalar(f16::from_f64(f)),
            Dtype::Bf16 => Array::scalar(bf16::from_f64(f)),
            Dtype::F32 => Array::scalar(f as f32),
            Dtype::F64 => Array::scalar(f),
            Dtype::C64 => Array::scalar(f as f32).astype(Dtype::C64),
        }
    }
}

impl Array {
    /// An array holding a copy of `data`, laid out row-major in `shape`.
    ///
    /// A `data` whose length is not the product of `shape` gives a failed array.
    #[track_caller]
    pub fn from_slice<T: Element>(data: &[T], shape: &[i32]) -> Array {
        let expected = shape.iter().try_fold(1usize, |n, &d| {
            usize::try_from(d).ok().and_then(|d| n.checked_mul(d))
        });
        if expected != Some(data.len()) {
            return Array::failed(Error::Op {
                op: "from_slice",
                operands: format!("{}[{}]", T::DTYPE, data.len()),
                message: format!("{} values do not fill shape {shape:?}", data.len()),
                location: Location::caller(),
            });
        }
        op("from_slice", &[], |_, out| {
            // SAFETY: `data` holds exactly `product(shape)` elements of `T::DTYPE`'s
            // element type; the shim copies them before returning.
            unsafe {
                sys::mlxs_array_from_data(
                    data.as_ptr().cast(),
                    shape.as_ptr(),
                    shape.len(),
                    T::DTYPE.code(),
                    out,
                )
            }
        })
    }

    /// A zero-dimensional array.
    #[track_caller]
    pub fn scalar<T: Element>(value: T) -> Array {
        Array::from_slice(&[value], &[])
    }

    /// An array of `shape` filled with `value`, converted to `dtype`.
    #[track_caller]
    pub fn full(shape: &[i32], value: impl Into<Scalar>, dtype: Dtype) -> Array {
        let value = value.into().to_array(dtype);
        op("full", &[Some(&value)], |raw, out| {
            // SAFETY: live scalar handle; the shim reads `shape.len()` dims.
            unsafe { sys::mlxs_full(shape.as_ptr(), shape.len(), raw[0], out) }
        })
    }

    /// An array of zeros.
    #[track_caller]
    pub fn zeros(shape: &[i32], dtype: Dtype) -> Array {
        Array::full(shape, 0, dtype)
    }

    /// An array of ones.
    #[track_caller]
    pub fn ones(shape: &[i32], dtype: Dtype) -> Array {
        Array::full(shape, 1, dtype)
    }

    /// Values from `start` (inclusive) to `stop` (exclusive), `step` apart.
    #[track_caller]
    pub fn arange(start: f64, stop: f64, step: f64, dtype: Dtype) -> Array {
        op("arange", &[], |_, out| {
            // SAFETY: plain values in, new handle out.
            unsafe { sys::mlxs_arange(start, stop, step, dtype.code(), out) }
        })
    }

    /// `num` evenly spaced values from `start` to `stop`, both included.
    #[track_caller]
    pub fn linspace(start: f64, stop: f64, num: i32, dtype: Dtype) -> Array {
        op("linspace", &[], |_, out| {
            // SAFETY: plain values in, new handle out.
            unsafe { sys::mlxs_linspace(start, stop, num, dtype.code(), out) }
        })
    }

    /// A copy converted to `dtype` (a no-op node when the dtype already matches).
    #[track_caller]
    pub fn astype(&self, dtype: Dtype) -> Array {
        op("astype", &[Some(self)], |raw, out| {
            // SAFETY: live handle.
            unsafe { sys::mlxs_astype(raw[0], dtype.code(), out) }
        })
    }
}
