//! Quantized linear weights: the two formats, their record in `config.json`, and which
//! matrix product runs them on the device at hand.
//!
//! Both formats quantize a linear layer's `[out, in]` weight along `in` in groups of
//! [`GROUP_SIZE`], 8 bits per element, packed four to a `uint32` (MLX's layout):
//!
//! - `mxfp8`: each element an FP8 E4M3 number, each group sharing a power-of-two (E8M0,
//!   `uint8`) scale. No biases.
//! - `affine8`: each element an integer `q` in `0..=255`, each group with a float scale and
//!   bias: `w ≈ scale · q + bias` (the seed's affine 8-bit mode).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::ops::{QuantMode, Quantized};
use crate::{Array, Dtype};
use serde::{Deserialize, Serialize};

/// Elements per quantization group (MXFP8 fixes it at 32; affine8 uses the same).
pub const GROUP_SIZE: i32 = 32;
/// Bits per quantized element.
pub const BITS: i32 = 8;

/// The 8-bit formats a linear layer can be stored in, named as `config.json`'s
/// `quantization.mode` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum QuantFormat {
    /// FP8 E4M3 elements with a shared power-of-two scale per group.
    Mxfp8,
    /// 8-bit integers with a float scale and bias per group.
    Affine8,
}

impl QuantFormat {
    pub const ALL: [QuantFormat; 2] = [QuantFormat::Mxfp8, QuantFormat::Affine8];

    /// The name on the command line and in `config.json`.
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Mxfp8 => "mxfp8",
            QuantFormat::Affine8 => "affine8",
        }
    }

    /// MLX's mode.
    pub fn mode(self) -> QuantMode {
        match self {
            QuantFormat::Mxfp8 => QuantMode::Mxfp8,
            QuantFormat::Affine8 => QuantMode::Affine,
        }
    }

    /// Quantizes `w` (`[out, in]`, `in` a multiple of [`GROUP_SIZE`]) along its last axis.
    /// Lazy: the packed arrays are computed when evaluated.
    #[track_caller]
    pub fn quantize(self, w: &Array) -> crate::Result<Quantized> {
        Quantized::new(w, GROUP_SIZE, BITS, self.mode())
    }

    /// The dtype of the per-group scales: E8M0 bytes for mxfp8, the weights' float dtype
    /// (`dtype`) for affine8.
    pub fn scale_dtype(self, dtype: Dtype) -> Dtype {
        match self {
            QuantFormat::Mxfp8 => Dtype::U8,
            QuantFormat::Affine8 => dtype,
        }
    }

    /// Whether the format stores a bias per group.
    pub fn has_biases(self) -> bool {
        self.mode().has_biases()
    }
}

impl fmt::Display for QuantFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for QuantFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<QuantFormat, String> {
        QuantFormat::ALL
            .into_iter()
            .find(|format| format.name() == s)
            .ok_or_else(|| format!("unknown quantization mode `{s}` (expected mxfp8 or affine8)"))
    }
}

impl TryFrom<String> for QuantFormat {
    type Error = String;

    fn try_from(s: String) -> Result<QuantFormat, String> {
        s.parse()
    }
}

impl From<QuantFormat> for String {
    fn from(format: QuantFormat) -> String {
        format.name().to_string()
    }
}

/// `config.json`'s `"quantization"`: how the quantized linear layers are stored. Which
/// layers are quantized is told by the tensors (`<layer>.weight_scale`), not here.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuantConfig {
    pub mode: QuantFormat,
    pub group_size: i32,
    pub bits: i32,
}

impl QuantConfig {
    pub fn new(mode: QuantFormat) -> QuantConfig {
        QuantConfig {
            mode,
            group_size: GROUP_SIZE,
            bits: BITS,
        }
    }

    /// Only the group size and width this implementation writes are read back.
    pub fn validate(&self) -> Result<(), String> {
        if (self.group_size, self.bits) != (GROUP_SIZE, BITS) {
            return Err(format!(
                "quantization: {} with group size {} and {} bits is not supported \
                 (group size {GROUP_SIZE}, {BITS} bits)",
                self.mode, self.group_size, self.bits
            ));
        }
        Ok(())
    }
}

/// How a quantized layer computes `x wᵀ`. Part of the layer's structure, so compiled graphs
/// trace each path separately.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MatmulPath {
    /// MLX's `quantized_matmul` on the packed weights.
    Kernel,
    /// Dequantize the weights to the compute dtype, then an ordinary matmul.
    Dequantize,
}

impl MatmulPath {
    /// How reports name the path.
    pub fn name(self) -> &'static str {
        match self {
            MatmulPath::Kernel => "quantized_matmul",
            MatmulPath::Dequantize => "dequantize+matmul",
        }
    }
}

impl fmt::Display for MatmulPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The product a probe times: `[tokens, inp] × [out, inp]ᵀ`, shaped like a model's own
/// layer at the token count it runs at. Which path wins depends on the shape: a kernel that
/// wins at a few tokens (where reading the weights is the whole cost) can lose by 3x at
/// thousands (where the product is compute-bound and dequantizing once is cheap).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeShape {
    pub tokens: i32,
    pub out: i32,
    pub inp: i32,
}

/// Which product runs `format` fastest with `dtype` activations on the default device for
/// a layer of `shape`, decided by asking the device, not by its name: if MLX has a
/// `quantized_matmul` kernel for the format there (see [`kernel_available`]), both paths
/// are timed on that product and the faster one wins. MLX's CPU kernels are plain loops,
/// 30 to 100 times slower than dequantizing and handing the product to BLAS. Costs a few
/// products' time, once per load.
pub fn probe(format: QuantFormat, dtype: Dtype, shape: ProbeShape) -> MatmulPath {
    if !kernel_available(format, dtype) {
        return MatmulPath::Dequantize;
    }
    let timed = |path| time_product(format, dtype, shape, path);
    let path = match (timed(MatmulPath::Kernel), timed(MatmulPath::Dequantize)) {
        (Some(kernel), Some(dequantize)) => {
            tracing::info!(
                "{format} with {dtype} activations: quantized_matmul {kernel:?}, \
                 dequantize+matmul {dequantize:?}"
            );
            if kernel <= dequantize {
                MatmulPath::Kernel
            } else {
                MatmulPath::Dequantize
            }
        }
        // Whichever path ran is the one to use.
        (Some(_), None) => MatmulPath::Kernel,
        _ => MatmulPath::Dequantize,
    };
    tracing::debug!("{format} with {dtype} activations: {path}");
    path
}

/// Whether MLX has a `quantized_matmul` kernel for `format` with `dtype` activations on the
/// default device: runs a tiny one and checks that it evaluates. A kernel MLX lacks (an
/// FP8 mode on a GPU backend built without it, say) fails at evaluation, not when the graph
/// is built, so running one is the only reliable test.
pub fn kernel_available(format: QuantFormat, dtype: Dtype) -> bool {
    let w = Array::ones(&[GROUP_SIZE, 2 * GROUP_SIZE], dtype);
    let x = Array::ones(&[2, 2 * GROUP_SIZE], dtype);
    match format
        .quantize(&w)
        .and_then(|q| crate::eval([&q.matmul(&x, true)]))
    {
        Ok(()) => true,
        Err(error) => {
            tracing::info!("{format} quantized_matmul unavailable ({error}); dequantizing");
            false
        }
    }
}

/// The best of three timings of the `shape` product through `path` (after a warm-up run),
/// or `None` if it fails. Random operands: constant ones can run faster than real data.
fn time_product(
    format: QuantFormat,
    dtype: Dtype,
    shape: ProbeShape,
    path: MatmulPath,
) -> Option<Duration> {
    let key = crate::random::key(0);
    let w = crate::random::normal(&[shape.out, shape.inp], dtype, &key) * 0.02;
    let x = crate::random::normal(&[shape.tokens, shape.inp], dtype, &key);
    let q = format.quantize(&w).ok()?;
    crate::eval([&q.weights, &q.scales]).ok()?;
    let product = || match path {
        MatmulPath::Kernel => q.matmul(&x, true),
        MatmulPath::Dequantize => x.matmul(&q.dequantize(Some(dtype)).t()),
    };
    crate::eval([&product()]).ok()?;
    (0..3)
        .map(|_| {
            let started = Instant::now();
            crate::eval([&product()]).ok()?;
            Some(started.elapsed())
        })
        .collect::<Option<Vec<_>>>()?
        .into_iter()
        .min()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_parse_and_print_by_their_names() {
        for format in QuantFormat::ALL {
            assert_eq!(format.name().parse::<QuantFormat>(), Ok(format));
            let json = serde_json::to_string(&QuantConfig::new(format)).unwrap();
            let back: QuantConfig = serde_json::from_str(&json).unwrap();
            assert_eq!(back, QuantConfig::new(format));
        }
        let err = "fp4".parse::<QuantFormat>().unwrap_err();
        assert!(err.contains("unknown quantization mode `fp4`"), "{err}");
        let err = serde_json::from_str::<QuantConfig>(
            r#"{"mode": "affine", "group_size": 32, "bits": 8}"#,
        )
        .unwrap_err();
        assert!(err.to_string().contains("`affine`"), "{err}");
    }

    #[test]
    fn other_group_sizes_and_widths_are_rejected() {
        let config = QuantConfig {
            bits: 4,
            ..QuantConfig::new(QuantFormat::Affine8)
        };
        assert!(config.validate().unwrap_err().contains("not supported"));
        QuantConfig::new(QuantFormat::Mxfp8).validate().unwrap();
    }

    #[test]
    fn the_probe_finds_the_cpu_kernels() {
        // MLX 0.32 has CPU kernels for both modes (mlx/backend/cpu/quantized.cpp); on a GPU
        // the answer depends on the backend, so only the CPU is pinned down here.
        if !matches!(crate::default_device(), Ok(crate::Device::Cpu)) {
            return;
        }
        for format in QuantFormat::ALL {
            for dtype in [Dtype::F32, Dtype::Bf16] {
                assert!(kernel_available(format, dtype), "{format} {dtype}");
            }
        }
    }

    #[test]
    fn both_timed_paths_compute() {
        let shape = ProbeShape {
            tokens: 8,
            out: 64,
            inp: 64,
        };
        for format in QuantFormat::ALL {
            for path in [MatmulPath::Kernel, MatmulPath::Dequantize] {
                assert!(
                    time_product(format, Dtype::F32, shape, path).is_some(),
                    "{format} {path}"
                );
            }
        }
    }
}
