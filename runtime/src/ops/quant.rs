//! Quantized weights: packing, unpacking and quantized matrix products.

use std::ffi::CStr;
use std::fmt;

use crate::array::op;
use crate::array_list::op_list;
use crate::sys;
use crate::{Array, Dtype, Error, Result};

/// How MLX packs quantized weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QuantMode {
    /// Integers with a float scale and bias per group (`w ≈ scale * q + bias`); 2 to 8 bits.
    Affine,
    /// FP8 E4M3 elements with a shared power-of-two (E8M0) scale per 32; 8 bits, no biases.
    Mxfp8,
    /// FP4 E2M1 elements with a shared E8M0 scale per 32; 4 bits, no biases.
    Mxfp4,
    /// FP4 E2M1 elements with an FP8 scale per 16; 4 bits, no biases.
    Nvfp4,
}

impl QuantMode {
    /// MLX's name for the mode.
    pub fn name(self) -> &'static str {
        match self {
            QuantMode::Affine => "affine",
            QuantMode::Mxfp8 => "mxfp8",
            QuantMode::Mxfp4 => "mxfp4",
            QuantMode::Nvfp4 => "nvfp4",
        }
    }

    fn c_name(self) -> &'static CStr {
        match self {
            QuantMode::Affine => c"affine",
            QuantMode::Mxfp8 => c"mxfp8",
            QuantMode::Mxfp4 => c"mxfp4",
            QuantMode::Nvfp4 => c"nvfp4",
        }
    }

    /// Whether the mode stores a bias per group.
    pub fn has_biases(self) -> bool {
        self == QuantMode::Affine
    }
}

impl fmt::Display for QuantMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for QuantMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "affine" => Ok(QuantMode::Affine),
            "mxfp8" => Ok(QuantMode::Mxfp8),
            "mxfp4" => Ok(QuantMode::Mxfp4),
            "nvfp4" => Ok(QuantMode::Nvfp4),
            other => Err(format!(
                "unknown quantization mode `{other}` (expected affine, mxfp8, mxfp4 or nvfp4)"
            )),
        }
    }
}

/// A matrix in MLX's quantized layout: packed `uint32` weights with per-group scales (and
/// biases in affine mode), quantized along the last axis.
#[derive(Clone, Debug)]
pub struct Quantized {
    pub weights: Array,
    pub scales: Array,
    pub biases: Option<Array>,
    pub group_size: i32,
    pub bits: i32,
    pub mode: QuantMode,
}

impl Quantized {
    /// Quantizes `w` (last axis divisible by `group_size`) with `bits` per element.
    #[track_caller]
    pub fn new(w: &Array, group_size: i32, bits: i32, mode: QuantMode) -> Result<Quantized> {
        check_params("quantize", &[w], group_size, bits)?;
        let mut parts = op_list("quantize", &[w], |r, out| {
            // SAFETY: live handle; static NUL-terminated mode name.
            unsafe { sys::mlxs_quantize(r[0], group_size, bits, mode.c_name().as_ptr(), out) }
        })?
        .into_iter();
        let (Some(weights), Some(scales)) = (parts.next(), parts.next()) else {
            return Err(Error::Op {
                op: "quantize",
                operands: crate::array::describe(&[w]),
                message: "MLX returned fewer than two arrays".into(),
                location: std::panic::Location::caller(),
            });
        };
        Ok(Quantized {
            weights,
            scales,
            biases: parts.next(),
            group_size,
            bits,
            mode,
        })
    }

    /// The float matrix the packed weights stand for, in the scales' dtype or `dtype`.
    #[track_caller]
    pub fn dequantize(&self, dtype: Option<Dtype>) -> Array {
        if let Err(error) = check_params("dequantize", &[&self.weights], self.group_size, self.bits)
        {
            return Array::failed(error);
        }
        let mode = self.mode;
        op(
            "dequantize",
            &[
                Some(&self.weights),
                Some(&self.scales),
                self.biases.as_ref(),
            ],
            |r, out| {
                // SAFETY: live handles (biases may be null); static mode name.
                unsafe {
                    sys::mlxs_dequantize(
                        r[0],
                        r[1],
                        r[2],
                        self.group_size,
                        self.bits,
                        mode.c_name().as_ptr(),
                        dtype.map_or(-1, Dtype::code),
                        out,
                    )
                }
            },
        )
    }

    /// `x @ wᵀ` (`transpose: true`, the linear-layer layout `[out, in]`) or `x @ w`,
    /// computed on the packed weights.
    #[track_caller]
    pub fn matmul(&self, x: &Array, transpose: bool) -> Array {
        if let Err(error) = check_params(
            "quantized_matmul",
            &[x, &self.weights],
            self.group_size,
            self.bits,
        ) {
            return Array::failed(error);
        }
        let mode = self.mode;
        op(
            "quantized_matmul",
            &[
                Some(x),
                Some(&self.weights),
                Some(&self.scales),
                self.biases.as_ref(),
            ],
            |r, out| {
                // SAFETY: live handles (biases may be null); static mode name.
                unsafe {
                    sys::mlxs_quantized_matmul(
                        r[0],
                        r[1],
                        r[2],
                        r[3],
                        i32::from(transpose),
                        self.group_size,
                        self.bits,
                        mode.c_name().as_ptr(),
                        out,
                    )
                }
            },
        )
    }
}

/// MLX divides by the group size and bit width unchecked: zero or less would kill the
/// process, so they are rejected here.
#[track_caller]
fn check_params(op: &'static str, inputs: &[&Array], group_size: i32, bits: i32) -> Result<()> {
    if group_size < 1 || bits < 1 {
        return Err(Error::Op {
            op,
            operands: crate::array::describe(inputs),
            message: format!("group size and bits must be positive (got {group_size} and {bits})"),
            location: std::panic::Location::caller(),
        });
    }
    Ok(())
}
