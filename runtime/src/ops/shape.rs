//! Reshaping, reordering, joining, splitting and slicing.

use std::ptr;

use crate::array::{invalid, op};
use crate::array_list::{op_list, ArrayList};
use crate::error::last_error;
use crate::ops::Axes;
use crate::sys;
use crate::Array;

impl Array {
    /// The shape as `N` sizes, for destructuring: `let [b, l, d] = x.dims();`.
    ///
    /// # Panics
    ///
    /// If the array does not have exactly `N` axes. Model code calls it on arrays whose
    /// rank it has fixed; inside an `#[mlx::graph]` (compiled or eager) the panic comes
    /// back as an `Err` naming this line. A failed array gives zeros instead: its own
    /// error, carried by every op built on it, is the one worth reporting.
    #[track_caller]
    pub fn dims<const N: usize>(&self) -> [i32; N] {
        match <[i32; N]>::try_from(self.shape()) {
            Ok(dims) => dims,
            Err(_) if self.error().is_some() => [0; N],
            Err(_) => panic!(
                "expected an array with {N} axes, found shape {:?}",
                self.shape()
            ),
        }
    }

    /// The same elements in a new shape; one dimension may be `-1` (inferred).
    #[track_caller]
    pub fn reshape(&self, shape: &[i32]) -> Array {
        with_ints(self, "reshape", shape, sys::mlxs_reshape)
    }

    /// Axes reordered: output axis `i` is input axis `axes[i]`.
    #[track_caller]
    pub fn transpose(&self, axes: &[i32]) -> Array {
        with_ints(self, "transpose", axes, sys::mlxs_transpose)
    }

    /// Axes in reverse order (the matrix transpose for 2-D arrays).
    #[track_caller]
    pub fn t(&self) -> Array {
        op("t", &[Some(self)], |r, out| {
            // SAFETY: live handle; null axes means reverse.
            unsafe { sys::mlxs_transpose(r[0], ptr::null(), 0, out) }
        })
    }

    /// Two axes exchanged.
    #[track_caller]
    pub fn swapaxes(&self, axis1: i32, axis2: i32) -> Array {
        op("swapaxes", &[Some(self)], |r, out| {
            // SAFETY: live handle.
            unsafe { sys::mlxs_swapaxes(r[0], axis1, axis2, out) }
        })
    }

    /// New axes of size 1 inserted at `axes` (positions in the output).
    #[track_caller]
    pub fn expand_dims<'a>(&self, axes: impl Into<Axes<'a>>) -> Array {
        let axes = axes.into();
        let mut slot = [0];
        let Some(axes) = axes.as_slice(&mut slot) else {
            return invalid("expand_dims", &[self], "needs explicit axes, not ALL");
        };
        with_ints(self, "expand_dims", axes, sys::mlxs_expand_dims)
    }

    /// Axes of size 1 removed: the given ones, or all of them with [`ALL`](crate::ops::ALL).
    #[track_caller]
    pub fn squeeze<'a>(&self, axes: impl Into<Axes<'a>>) -> Array {
        let axes = axes.into();
        let mut slot = [0];
        let axes = axes.as_slice(&mut slot);
        op("squeeze", &[Some(self)], |r, out| {
            let (ptr, len) = axes.map_or((ptr::null(), 0), |a| (a.as_ptr(), a.len()));
            // SAFETY: live handle; `ptr` is null or points to `len` ints.
            unsafe { sys::mlxs_squeeze(r[0], ptr, len, out) }
        })
    }

    /// Axes `start_axis..=end_axis` merged into one (`flatten(0, -1)` gives a vector).
    #[track_caller]
    pub fn flatten(&self, start_axis: i32, end_axis: i32) -> Array {
        op("flatten", &[Some(self)], |r, out| {
            // SAFETY: live handle.
            unsafe { sys::mlxs_flatten(r[0], start_axis, end_axis, out) }
        })
    }

    /// The array broadcast to `shape` (a view, no copy).
    #[track_caller]
    pub fn broadcast_to(&self, shape: &[i32]) -> Array {
        with_ints(self, "broadcast_to", shape, sys::mlxs_broadcast_to)
    }

    /// The array repeated `reps[i]` times along axis `i`.
    #[track_caller]
    pub fn tile(&self, reps: &[i32]) -> Array {
        with_ints(self, "tile", reps, sys::mlxs_tile)
    }

    /// `sections` equal parts along `axis`.
    ///
    /// If the split is impossible, every part is a failed array carrying the error.
    #[track_caller]
    pub fn split(&self, sections: i32, axis: i32) -> Vec<Array> {
        let parts = usize::try_from(sections).unwrap_or(0).max(1);
        self.split_with("split", parts, |raw, out| {
            // SAFETY: live handle.
            unsafe { sys::mlxs_split_sections(raw, sections, axis, out) }
        })
    }

    /// Parts cut before each of `indices` along `axis` (`indices.len() + 1` parts).
    #[track_caller]
    pub fn split_at(&self, indices: &[i32], axis: i32) -> Vec<Array> {
        self.split_with("split_at", indices.len() + 1, |raw, out| {
            // SAFETY: live handle, `indices.len()` indices.
            unsafe { sys::mlxs_split_indices(raw, indices.as_ptr(), indices.len(), axis, out) }
        })
    }

    #[track_caller]
    fn split_with(
        &self,
        name: &'static str,
        parts: usize,
        call: impl FnOnce(*const sys::mlxs_array, *mut *mut sys::mlxs_vec) -> i32,
    ) -> Vec<Array> {
        op_list(name, &[self], |r, out| call(r[0], out))
            .unwrap_or_else(|error| vec![Array::failed(error); parts])
    }

    /// The elements from `start` (inclusive) to `stop` (exclusive) with `strides` along
    /// every axis; `strides` may be empty for all ones. Negative bounds count from the end
    /// and out-of-range bounds are clamped, as in NumPy.
    #[track_caller]
    pub fn slice(&self, start: &[i32], stop: &[i32], strides: &[i32]) -> Array {
        let ones;
        let strides = if strides.is_empty() {
            ones = vec![1; start.len()];
            &ones[..]
        } else {
            strides
        };
        if strides.contains(&0) {
            return invalid(
                "slice",
                &[self],
                format!("strides must not be zero: {strides:?}"),
            );
        }
        if stop.len() != start.len() || strides.len() != start.len() {
            return invalid(
                "slice",
                &[self],
                format!(
                    "start, stop and strides differ in length ({}, {}, {})",
                    start.len(),
                    stop.len(),
                    strides.len()
                ),
            );
        }
        op("slice", &[Some(self)], |r, out| {
            // SAFETY: live handle; three arrays of `start.len()` ints.
            unsafe {
                sys::mlxs_slice(
                    r[0],
                    start.as_ptr(),
                    stop.as_ptr(),
                    strides.as_ptr(),
                    start.len(),
                    out,
                )
            }
        })
    }

    /// `start..stop` along one axis, everything along the others.
    #[track_caller]
    pub fn slice_axis(&self, axis: i32, start: i32, stop: i32) -> Array {
        let ndim = self.ndim() as i32;
        let a = if axis < 0 { axis + ndim } else { axis };
        if self.error().is_none() && !(0..ndim).contains(&a) {
            return invalid(
                "slice_axis",
                &[self],
                format!("axis {axis} is out of range for {ndim} dimensions"),
            );
        }
        let mut starts = vec![0; ndim as usize];
        let mut stops: Vec<i32> = self.shape().to_vec();
        if let Some(i) = usize::try_from(a).ok().filter(|&i| i < starts.len()) {
            starts[i] = start;
            stops[i] = stop;
        }
        self.slice(&starts, &stops, &[])
    }

    /// A copy of `self` with the slice `start..stop` (by `strides`, empty for ones)
    /// replaced by `update` (broadcast to the slice's shape).
    #[track_caller]
    pub fn slice_update(
        &self,
        update: &Array,
        start: &[i32],
        stop: &[i32],
        strides: &[i32],
    ) -> Array {
        let ones;
        let strides = if strides.is_empty() {
            ones = vec![1; start.len()];
            &ones[..]
        } else {
            strides
        };
        if strides.contains(&0) {
            return invalid(
                "slice_update",
                &[self, update],
                format!("strides must not be zero: {strides:?}"),
            );
        }
        if stop.len() != start.len() || strides.len() != start.len() {
            return invalid(
                "slice_update",
                &[self, update],
                "start, stop and strides differ in length",
            );
        }
        op("slice_update", &[Some(self), Some(update)], |r, out| {
            // SAFETY: live handles; three arrays of `start.len()` ints.
            unsafe {
                sys::mlxs_slice_update(
                    r[0],
                    r[1],
                    start.as_ptr(),
                    stop.as_ptr(),
                    strides.as_ptr(),
                    start.len(),
                    out,
                )
            }
        })
    }
}

impl Array {
    /// A copy of `self` with `update` written at the positions `start` (integers, one per
    /// axis in `axes`; the other axes start at 0), which are read only when the graph runs:
    /// one compiled graph then writes anywhere, as a KV cache filled token by token needs.
    /// MLX clamps a start that would run past the end.
    #[track_caller]
    pub fn slice_update_at(&self, update: &Array, start: &Array, axes: &[i32]) -> Array {
        op(
            "slice_update_at",
            &[Some(self), Some(update), Some(start)],
            |r, out| {
                // SAFETY: live handles; `axes.len()` ints.
                unsafe {
                    sys::mlxs_slice_update_dynamic(r[0], r[1], r[2], axes.as_ptr(), axes.len(), out)
                }
            },
        )
    }
}

/// The signature shared by the shim's ops that take one array and a list of ints.
type IntsOp = unsafe extern "C" fn(
    *const sys::mlxs_array,
    *const i32,
    usize,
    *mut *mut sys::mlxs_array,
) -> i32;

#[track_caller]
fn with_ints(x: &Array, name: &'static str, ints: &[i32], call: IntsOp) -> Array {
    op(name, &[Some(x)], |r, out| {
        // SAFETY: live handle; `ints.len()` ints.
        unsafe { call(r[0], ints.as_ptr(), ints.len(), out) }
    })
}

/// The arrays joined along an existing `axis`.
#[track_caller]
pub fn concatenate(arrays: &[&Array], axis: i32) -> Array {
    join("concatenate", arrays, |list, out| {
        // SAFETY: live list.
        unsafe { sys::mlxs_concatenate(list, axis, out) }
    })
}

/// The arrays (all of one shape) joined along a new `axis`.
#[track_caller]
pub fn stack(arrays: &[&Array], axis: i32) -> Array {
    join("stack", arrays, |list, out| {
        // SAFETY: live list.
        unsafe { sys::mlxs_stack(list, axis, out) }
    })
}

#[track_caller]
fn join(
    name: &'static str,
    arrays: &[&Array],
    call: impl FnOnce(*const sys::mlxs_vec, *mut *mut sys::mlxs_array) -> i32,
) -> Array {
    let list = match ArrayList::of(arrays.iter().copied()) {
        Ok(list) => list,
        // `invalid` passes the failed input's own error on.
        Err(_) => return invalid(name, arrays, "an input failed"),
    };
    let mut out = ptr::null_mut();
    if call(list.as_ptr(), &mut out) == 0 {
        // SAFETY: on success the shim hands us a new handle we own.
        unsafe { Array::from_raw(out) }
    } else {
        invalid(name, arrays, last_error())
    }
}
