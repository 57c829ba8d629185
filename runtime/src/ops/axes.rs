//! Which axes an op works on.

/// The axes argument of reductions and friends: one axis (`-1`), several (`&[0, 2]`,
/// `[0, 2]`), or every axis ([`ALL`]). Negative axes count from the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Axes<'a> {
    All,
    One(i32),
    Many(&'a [i32]),
}

/// Every axis: `x.sum(ALL, false)` is the sum of all elements.
pub const ALL: Axes<'static> = Axes::All;

impl From<i32> for Axes<'_> {
    fn from(axis: i32) -> Self {
        Axes::One(axis)
    }
}

impl<'a> From<&'a [i32]> for Axes<'a> {
    fn from(axes: &'a [i32]) -> Self {
        Axes::Many(axes)
    }
}

impl<'a, const N: usize> From<&'a [i32; N]> for Axes<'a> {
    fn from(axes: &'a [i32; N]) -> Self {
        Axes::Many(axes)
    }
}

impl<'a> From<&'a Vec<i32>> for Axes<'a> {
    fn from(axes: &'a Vec<i32>) -> Self {
        Axes::Many(axes)
    }
}

impl Axes<'_> {
    /// The explicit axes, or `None` for all of them. `One` is returned through `slot`.
    pub(crate) fn as_slice<'s>(&'s self, slot: &'s mut [i32; 1]) -> Option<&'s [i32]> {
        match self {
            Axes::All => None,
            Axes::One(axis) => {
                slot[0] = *axis;
                Some(&slot[..])
            }
            Axes::Many(axes) => Some(axes),
        }
    }
}
