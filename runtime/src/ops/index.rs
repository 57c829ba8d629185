//! Gathering and padding.

use crate::array::{invalid, op};
use crate::ops::Axes;
use crate::sys;
use crate::{Array, Scalar};

impl Array {
    /// Elements at integer `indices` along `axis`, or of the flattened array with
    /// [`ALL`](crate::ops::ALL). The output has `indices`' shape in place of that axis.
    #[track_caller]
    pub fn take<'a>(&self, indices: &Array, axis: impl Into<Axes<'a>>) -> Array {
        let (axis, all) = match axis.into() {
            Axes::All => (0, 1),
            Axes::One(axis) | Axes::Many(&[axis]) => (axis, 0),
            Axes::Many(axes) => {
                return invalid(
                    "take",
                    &[self, indices],
                    format!("takes one axis or ALL, got {axes:?}"),
                )
            }
        };
        op("take", &[Some(self), Some(indices)], |r, out| {
            // SAFETY: live handles.
            unsafe { sys::mlxs_take(r[0], r[1], axis, all, out) }
        })
    }

    /// Elements picked along `axis` by `indices` of the same rank (NumPy's
    /// `take_along_axis`).
    #[track_caller]
    pub fn take_along_axis(&self, indices: &Array, axis: i32) -> Array {
        op("take_along_axis", &[Some(self), Some(indices)], |r, out| {
            // SAFETY: live handles.
            unsafe { sys::mlxs_take_along_axis(r[0], r[1], axis, out) }
        })
    }

    /// Padded with `value`: `widths[i] = (before, after)` for axis `i`, one pair per axis.
    #[track_caller]
    pub fn pad(&self, widths: &[(i32, i32)], value: impl Into<Scalar>) -> Array {
        if self.error().is_none() && widths.len() != self.ndim() {
            return invalid(
                "pad",
                &[self],
                format!(
                    "needs one (before, after) pair per axis: {} for {} axes",
                    widths.len(),
                    self.ndim()
                ),
            );
        }
        let axes: Vec<i32> = (0..widths.len() as i32).collect();
        let low: Vec<i32> = widths.iter().map(|w| w.0).collect();
        let high: Vec<i32> = widths.iter().map(|w| w.1).collect();
        let value = value.into();
        let value = value.to_array(value.dtype_next_to(self.dtype()));
        op("pad", &[Some(self), Some(&value)], |r, out| {
            // SAFETY: live handles; three arrays of `axes.len()` ints; a NUL-terminated mode.
            unsafe {
                sys::mlxs_pad(
                    r[0],
                    axes.as_ptr(),
                    low.as_ptr(),
                    high.as_ptr(),
                    axes.len(),
                    r[1],
                    c"constant".as_ptr(),
                    out,
                )
            }
        })
    }
}
