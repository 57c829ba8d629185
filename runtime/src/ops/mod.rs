//! Ops on arrays. Most are methods of [`Array`](crate::Array), grouped by family in the
//! submodules; ops over several arrays ([`concatenate`], [`stack`], [`where_`]) are
//! functions. Broadcasting follows NumPy, and scalar operands are weakly typed (see
//! [`Scalar`](crate::Scalar)).

mod arith;
mod axes;
mod fp8;
mod index;
mod linalg;
mod quant;
mod reduce;
mod shape;

pub use arith::{where_, Operand};
pub use axes::{Axes, ALL};
pub use fp8::{fp8_kernel, fp8_matmul, Fp8Rows};
pub use linalg::Conv2d;
pub use quant::{QuantMode, Quantized};
pub use shape::{concatenate, stack};
