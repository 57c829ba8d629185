//! Element-wise arithmetic, comparisons, math functions and activations.

use std::borrow::Cow;
use std::ops::{Add, Div, Mul, Neg, Sub};

use crate::array::op;
use crate::sys::{self, Binary, Unary};
use crate::{Array, Scalar};

/// The second operand of a binary op: an array or a Rust number (see [`Scalar`] for how a
/// number picks its dtype).
pub trait Operand<'a> {
    /// This operand as an array, to be combined with `like`.
    #[track_caller]
    fn into_operand(self, like: &Array) -> Cow<'a, Array>;

    /// The array, if this operand is one (a scalar takes its dtype from the other side).
    fn as_array(&self) -> Option<&Array> {
        None
    }
}

impl<'a> Operand<'a> for &'a Array {
    fn into_operand(self, _like: &Array) -> Cow<'a, Array> {
        Cow::Borrowed(self)
    }

    fn as_array(&self) -> Option<&Array> {
        Some(self)
    }
}

impl<'a> Operand<'a> for Array {
    fn into_operand(self, _like: &Array) -> Cow<'a, Array> {
        Cow::Owned(self)
    }

    fn as_array(&self) -> Option<&Array> {
        Some(self)
    }
}

macro_rules! scalar_operand {
    ($($t:ty),*) => {$(
        impl<'a> Operand<'a> for $t {
            #[track_caller]
            fn into_operand(self, like: &Array) -> Cow<'a, Array> {
                let scalar = Scalar::from(self);
                Cow::Owned(scalar.to_array(scalar.dtype_next_to(like.dtype())))
            }
        }
    )*};
}
scalar_operand!(Scalar, f32, f64, i32, i64, u32, bool);

#[track_caller]
fn unary(x: &Array, kind: Unary, name: &'static str) -> Array {
    op(name, &[Some(x)], |r, out| {
        // SAFETY: live handle.
        unsafe { sys::mlxs_unary(kind as i32, r[0], out) }
    })
}

#[track_caller]
pub(crate) fn binary(a: &Array, b: &Array, kind: Binary, name: &'static str) -> Array {
    op(name, &[Some(a), Some(b)], |r, out| {
        // SAFETY: live handles.
        unsafe { sys::mlxs_binary(kind as i32, r[0], r[1], out) }
    })
}

macro_rules! unary_methods {
    ($($(#[$doc:meta])* $name:ident => $kind:ident;)*) => {
        impl Array {$(
            $(#[$doc])*
            #[track_caller]
            pub fn $name(&self) -> Array {
                unary(self, Unary::$kind, stringify!($name))
            }
        )*}
    };
}

unary_methods! {
    /// `e^x`.
    exp => Exp;
    /// Natural logarithm.
    log => Log;
    /// `ln(1 + x)`, accurate near zero.
    log1p => Log1p;
    /// Square root.
    sqrt => Sqrt;
    /// `1 / sqrt(x)`.
    rsqrt => Rsqrt;
    /// `x * x`.
    square => Square;
    /// Absolute value.
    abs => Abs;
    /// -1, 0 or 1.
    sign => Sign;
    /// Sine.
    sin => Sin;
    /// Cosine.
    cos => Cos;
    /// Hyperbolic tangent.
    tanh => Tanh;
    /// `1 / (1 + e^-x)`.
    sigmoid => Sigmoid;
    /// The error function.
    erf => Erf;
    /// Round down.
    floor => Floor;
    /// Round up.
    ceil => Ceil;
    /// Round half to even.
    round => Round;
    /// `1 / x`.
    reciprocal => Reciprocal;
    /// Boolean not.
    logical_not => LogicalNot;
    /// The same values, excluded from gradients.
    stop_gradient => StopGradient;
    /// A row-major copy when the array is a strided view (a no-op otherwise).
    contiguous => Contiguous;
    /// Whether each element is neither NaN nor infinite (always true for integers).
    isfinite => IsFinite;
}

macro_rules! binary_methods {
    ($($(#[$doc:meta])* $name:ident => $kind:ident;)*) => {
        impl Array {$(
            $(#[$doc])*
            #[track_caller]
            pub fn $name<'a>(&self, other: impl Operand<'a>) -> Array {
                let other = other.into_operand(self);
                binary(self, &other, Binary::$kind, stringify!($name))
            }
        )*}
    };
}

binary_methods! {
    /// `self ^ other`, element-wise.
    power => Power;
    /// Remainder of division, with the sign of the divisor (like Python's `%`).
    remainder => Remainder;
    /// The larger of the two, element-wise.
    maximum => Maximum;
    /// The smaller of the two, element-wise.
    minimum => Minimum;
    /// `self == other`, element-wise, as bool.
    equal => Equal;
    /// `self != other`, element-wise, as bool.
    not_equal => NotEqual;
    /// `self < other`, element-wise, as bool.
    less => Less;
    /// `self <= other`, element-wise, as bool.
    less_equal => LessEqual;
    /// `self > other`, element-wise, as bool.
    greater => Greater;
    /// `self >= other`, element-wise, as bool.
    greater_equal => GreaterEqual;
    /// Boolean and.
    logical_and => LogicalAnd;
    /// Boolean or.
    logical_or => LogicalOr;
}

impl Array {
    /// `x * sigmoid(x)` (SiLU, also called swish).
    #[track_caller]
    pub fn silu(&self) -> Array {
        self * self.sigmoid()
    }

    /// The exact GELU, `x * (1 + erf(x / sqrt(2))) / 2`.
    #[track_caller]
    pub fn gelu(&self) -> Array {
        self * ((self * std::f64::consts::FRAC_1_SQRT_2).erf() + 1.0) * 0.5
    }

    /// The tanh approximation of GELU,
    /// `x / 2 * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 x^3)))`.
    #[track_caller]
    pub fn gelu_approx(&self) -> Array {
        let sqrt_2_over_pi = (2.0 / std::f64::consts::PI).sqrt();
        let inner = (self + self * self.square() * 0.044715) * sqrt_2_over_pi;
        self * (inner.tanh() + 1.0) * 0.5
    }

    /// Values clamped to `[lo, hi]`.
    #[track_caller]
    pub fn clip<'a, 'b>(&self, lo: impl Operand<'a>, hi: impl Operand<'b>) -> Array {
        let lo = lo.into_operand(self);
        let hi = hi.into_operand(self);
        op("clip", &[Some(self), Some(&lo), Some(&hi)], |r, out| {
            // SAFETY: live handles.
            unsafe { sys::mlxs_clip(r[0], r[1], r[2], out) }
        })
    }
}

/// `a` where `cond` is true, `b` elsewhere (all three broadcast together).
#[track_caller]
pub fn where_<'a, 'b>(cond: &Array, a: impl Operand<'a>, b: impl Operand<'b>) -> Array {
    // A scalar branch takes its dtype from the other branch, as in `where(m, 1.0, bf16)`.
    let a = match b.as_array() {
        Some(other) => a.into_operand(other),
        None => a.into_operand(cond),
    };
    let b = b.into_operand(&a);
    op("where", &[Some(cond), Some(&a), Some(&b)], |r, out| {
        // SAFETY: live handles.
        unsafe { sys::mlxs_where(r[0], r[1], r[2], out) }
    })
}

macro_rules! operator {
    ($trait:ident, $method:ident, $kind:ident) => {
        impl<'a, R: Operand<'a>> $trait<R> for &Array {
            type Output = Array;
            #[track_caller]
            fn $method(self, rhs: R) -> Array {
                let rhs = rhs.into_operand(self);
                binary(self, &rhs, Binary::$kind, stringify!($method))
            }
        }

        impl<'a, R: Operand<'a>> $trait<R> for Array {
            type Output = Array;
            #[track_caller]
            fn $method(self, rhs: R) -> Array {
                let rhs = rhs.into_operand(&self);
                binary(&self, &rhs, Binary::$kind, stringify!($method))
            }
        }

        operator!(@scalar_lhs $trait, $method, $kind, f32, f64, i32, i64);
    };
    (@scalar_lhs $trait:ident, $method:ident, $kind:ident, $($t:ty),*) => {$(
        impl $trait<&Array> for $t {
            type Output = Array;
            #[track_caller]
            fn $method(self, rhs: &Array) -> Array {
                let lhs = Operand::into_operand(self, rhs);
                binary(&lhs, rhs, Binary::$kind, stringify!($method))
            }
        }

        impl $trait<Array> for $t {
            type Output = Array;
            #[track_caller]
            fn $method(self, rhs: Array) -> Array {
                let lhs = Operand::into_operand(self, &rhs);
                binary(&lhs, &rhs, Binary::$kind, stringify!($method))
            }
        }
    )*};
}

operator!(Add, add, Add);
operator!(Sub, sub, Subtract);
operator!(Mul, mul, Multiply);
operator!(Div, div, Divide);

impl Neg for &Array {
    type Output = Array;
    #[track_caller]
    fn neg(self) -> Array {
        unary(self, Unary::Negative, "neg")
    }
}

impl Neg for Array {
    type Output = Array;
    #[track_caller]
    fn neg(self) -> Array {
        unary(&self, Unary::Negative, "neg")
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::CStr;

    use super::*;

    /// The Rust op-code enums must list the shim's ops in the shim's order.
    #[test]
    fn op_codes_match_the_shim() {
        let name = |f: unsafe extern "C" fn(i32) -> *const std::ffi::c_char, code: i32| {
            // SAFETY: the shim returns a static string or null for unknown codes.
            let ptr = unsafe { f(code) };
            assert!(!ptr.is_null(), "shim has no op {code}");
            // SAFETY: non-null static NUL-terminated string.
            unsafe { CStr::from_ptr(ptr) }
                .to_str()
                .unwrap()
                .replace('_', "")
        };
        let unary = [
            (Unary::Negative, "negative"),
            (Unary::Exp, "exp"),
            (Unary::Log, "log"),
            (Unary::Log1p, "log1p"),
            (Unary::Sqrt, "sqrt"),
            (Unary::Rsqrt, "rsqrt"),
            (Unary::Square, "square"),
            (Unary::Abs, "abs"),
            (Unary::Sign, "sign"),
            (Unary::Sin, "sin"),
            (Unary::Cos, "cos"),
            (Unary::Tanh, "tanh"),
            (Unary::Sigmoid, "sigmoid"),
            (Unary::Erf, "erf"),
            (Unary::Floor, "floor"),
            (Unary::Ceil, "ceil"),
            (Unary::Round, "round"),
            (Unary::Reciprocal, "reciprocal"),
            (Unary::LogicalNot, "logicalnot"),
            (Unary::StopGradient, "stopgradient"),
            (Unary::Contiguous, "contiguous"),
            (Unary::IsFinite, "isfinite"),
        ];
        for (kind, expected) in unary {
            assert_eq!(name(sys::mlxs_unary_name, kind as i32), expected);
        }
        for (i, kind) in [
            Binary::Add,
            Binary::Subtract,
            Binary::Multiply,
            Binary::Divide,
            Binary::Remainder,
            Binary::Power,
            Binary::Maximum,
            Binary::Minimum,
            Binary::Equal,
            Binary::NotEqual,
            Binary::Less,
            Binary::LessEqual,
            Binary::Greater,
            Binary::GreaterEqual,
            Binary::LogicalAnd,
            Binary::LogicalOr,
            Binary::Matmul,
        ]
        .into_iter()
        .enumerate()
        {
            let rust = format!("{kind:?}").to_lowercase();
            assert_eq!(name(sys::mlxs_binary_name, i as i32), rust);
        }
        for (i, kind) in [
            sys::Reduce::Sum,
            sys::Reduce::Mean,
            sys::Reduce::Max,
            sys::Reduce::Min,
            sys::Reduce::Prod,
            sys::Reduce::Logsumexp,
            sys::Reduce::All,
            sys::Reduce::Any,
        ]
        .into_iter()
        .enumerate()
        {
            let rust = format!("{kind:?}").to_lowercase();
            assert_eq!(name(sys::mlxs_reduce_name, i as i32), rust);
        }
    }
}
