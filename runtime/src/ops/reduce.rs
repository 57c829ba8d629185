//! Reductions, scans, sorting and softmax.

use std::ptr;

use crate::array::{invalid, op};
use crate::ops::{Axes, ALL};
use crate::sys::{self, Reduce};
use crate::{Array, Result};

#[track_caller]
fn reduce(x: &Array, kind: Reduce, name: &'static str, axes: Axes<'_>, keepdims: bool) -> Array {
    let mut slot = [0];
    let axes = axes.as_slice(&mut slot);
    op(name, &[Some(x)], |r, out| {
        let (ptr, len) = axes.map_or((ptr::null(), 0), |a| (a.as_ptr(), a.len()));
        // SAFETY: live handle; `ptr` is null (all axes) or points to `len` ints.
        unsafe { sys::mlxs_reduce(kind as i32, r[0], ptr, len, i32::from(keepdims), out) }
    })
}

macro_rules! reductions {
    ($($(#[$doc:meta])* $name:ident => $kind:ident;)*) => {
        impl Array {$(
            $(#[$doc])*
            ///
            /// `axes`: one axis, several, or [`ALL`](crate::ops::ALL); `keepdims` keeps the
            /// reduced axes with size 1.
            #[track_caller]
            pub fn $name<'a>(&self, axes: impl Into<Axes<'a>>, keepdims: bool) -> Array {
                reduce(self, Reduce::$kind, stringify!($name), axes.into(), keepdims)
            }
        )*}
    };
}

reductions! {
    /// Sum.
    sum => Sum;
    /// Arithmetic mean.
    mean => Mean;
    /// Maximum.
    max => Max;
    /// Minimum.
    min => Min;
    /// Product.
    prod => Prod;
    /// `log(sum(exp(x)))`, computed stably.
    logsumexp => Logsumexp;
    /// Whether every element is true (non-zero).
    all => All;
    /// Whether any element is true (non-zero).
    any => Any;
}

impl Array {
    /// Whether no element is NaN or infinite (true for an empty array). Evaluates: for
    /// checking what a user gave, or what a run produced, at its end.
    pub fn all_finite(&self) -> Result<bool> {
        self.isfinite().all(ALL, false).item::<bool>()
    }

    /// Variance, dividing by `n - ddof`.
    #[track_caller]
    pub fn var<'a>(&self, axes: impl Into<Axes<'a>>, keepdims: bool, ddof: i32) -> Array {
        let axes = axes.into();
        let mut slot = [0];
        let axes = axes.as_slice(&mut slot);
        op("var", &[Some(self)], |r, out| {
            let (ptr, len) = axes.map_or((ptr::null(), 0), |a| (a.as_ptr(), a.len()));
            // SAFETY: live handle; `ptr` is null or points to `len` ints.
            unsafe { sys::mlxs_var(r[0], ptr, len, i32::from(keepdims), ddof, out) }
        })
    }

    /// Index of the largest element along one axis, or of the flattened array with
    /// [`ALL`](crate::ops::ALL). Ties go to the first.
    #[track_caller]
    pub fn argmax<'a>(&self, axis: impl Into<Axes<'a>>, keepdims: bool) -> Array {
        self.arg_reduce("argmax", axis.into(), keepdims, sys::mlxs_argmax)
    }

    /// Index of the smallest element along one axis, or of the flattened array with
    /// [`ALL`](crate::ops::ALL).
    #[track_caller]
    pub fn argmin<'a>(&self, axis: impl Into<Axes<'a>>, keepdims: bool) -> Array {
        self.arg_reduce("argmin", axis.into(), keepdims, sys::mlxs_argmin)
    }

    #[track_caller]
    fn arg_reduce(
        &self,
        name: &'static str,
        axis: Axes<'_>,
        keepdims: bool,
        call: unsafe extern "C" fn(
            *const sys::mlxs_array,
            i32,
            i32,
            i32,
            *mut *mut sys::mlxs_array,
        ) -> i32,
    ) -> Array {
        let (axis, all) = match axis {
            Axes::All => (0, 1),
            Axes::One(axis) | Axes::Many(&[axis]) => (axis, 0),
            Axes::Many(axes) => {
                return invalid(
                    name,
                    &[self],
                    format!("takes one axis or ALL, got {axes:?}"),
                )
            }
        };
        op(name, &[Some(self)], |r, out| {
            // SAFETY: live handle.
            unsafe { call(r[0], axis, all, i32::from(keepdims), out) }
        })
    }

    /// Softmax over `axes` (the last axis is the usual choice: `-1`).
    #[track_caller]
    pub fn softmax<'a>(&self, axes: impl Into<Axes<'a>>) -> Array {
        let axes = axes.into();
        let mut slot = [0];
        let axes = axes.as_slice(&mut slot);
        op("softmax", &[Some(self)], |r, out| {
            let (ptr, len) = axes.map_or((ptr::null(), 0), |a| (a.as_ptr(), a.len()));
            // SAFETY: live handle; `ptr` is null or points to `len` ints.
            unsafe { sys::mlxs_softmax(r[0], ptr, len, 0, out) }
        })
    }

    /// Cumulative sum along `axis`; `reverse` runs from the end, `inclusive: false` shifts
    /// by one (the first output is zero).
    #[track_caller]
    pub fn cumsum(&self, axis: i32, reverse: bool, inclusive: bool) -> Array {
        op("cumsum", &[Some(self)], |r, out| {
            // SAFETY: live handle.
            unsafe { sys::mlxs_cumsum(r[0], axis, i32::from(reverse), i32::from(inclusive), out) }
        })
    }

    /// The values sorted ascending along `axis`.
    #[track_caller]
    pub fn sort(&self, axis: i32) -> Array {
        op("sort", &[Some(self)], |r, out| {
            // SAFETY: live handle.
            unsafe { sys::mlxs_sort(r[0], axis, out) }
        })
    }

    /// Indices (`uint32`) that sort the values ascending along `axis`.
    #[track_caller]
    pub fn argsort(&self, axis: i32) -> Array {
        op("argsort", &[Some(self)], |r, out| {
            // SAFETY: live handle.
            unsafe { sys::mlxs_argsort(r[0], axis, out) }
        })
    }

    /// The `k` largest values along `axis`, in no particular order (as MLX returns them).
    #[track_caller]
    pub fn topk(&self, k: i32, axis: i32) -> Array {
        op("topk", &[Some(self)], |r, out| {
            // SAFETY: live handle.
            unsafe { sys::mlxs_topk(r[0], k, axis, out) }
        })
    }
}
