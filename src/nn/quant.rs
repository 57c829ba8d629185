//! Quantized linear weights: the formats, their record in `config.json`, and which matrix
//! product runs them on the device at hand.
//!
//! Every format quantizes a linear layer's `[out, in]` weight along `in` in groups, packed
//! into `uint32` words (MLX's layout; `32 / bits` elements to a word):
//!
//! - `affine4`, `affine8`: each element an integer `q` in `0..2^bits`, each group (of 32,
//!   64 or 128) with a float scale and bias: `w ≈ scale · q + bias` (MLX's `affine`).
//! - `mxfp8`: each element an FP8 E4M3 number, each group of 32 sharing a power-of-two
//!   (E8M0, `uint8`) scale. No biases.
//! - `mxfp4`: each element an FP4 E2M1 number, each group of 32 sharing an E8M0 scale.
//! - `nvfp4`: each element an FP4 E2M1 number, each group of 16 sharing an FP8 E4M3 scale
//!   (stored as `uint8`).
//!
//! And one format of this project's, for FP8 tensor cores (Ada and Hopper GPUs onwards):
//!
//! - `fp8`: each element an FP8 E4M3 number stored as a byte (`uint8` `[out, in]`), each
//!   output channel (row) with a float32 scale: its largest magnitude over 448. Its
//!   quantized product quantizes the activations the same way, one scale per token, and
//!   multiplies in FP8 (see [`crate::ops::fp8_matmul`]).

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::ops::{Fp8Rows, QuantMode, Quantized};
use crate::{Array, Dtype};
use serde::{Deserialize, Serialize};

/// The formats a linear layer can be stored in, named as `config.json`'s
/// `quantization.mode` names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum QuantFormat {
    /// 4-bit integers with a float scale and bias per group.
    Affine4,
    /// 8-bit integers with a float scale and bias per group.
    Affine8,
    /// FP4 E2M1 elements with a shared power-of-two scale per 32.
    Mxfp4,
    /// FP4 E2M1 elements with a shared FP8 E4M3 scale per 16.
    Nvfp4,
    /// FP8 E4M3 elements with a shared power-of-two scale per 32.
    Mxfp8,
    /// FP8 E4M3 elements with a float32 scale per output channel.
    Fp8,
}

impl QuantFormat {
    pub const ALL: [QuantFormat; 6] = [
        QuantFormat::Affine4,
        QuantFormat::Affine8,
        QuantFormat::Mxfp4,
        QuantFormat::Nvfp4,
        QuantFormat::Mxfp8,
        QuantFormat::Fp8,
    ];

    /// The name on the command line and in `config.json`.
    pub fn name(self) -> &'static str {
        match self {
            QuantFormat::Affine4 => "affine4",
            QuantFormat::Affine8 => "affine8",
            QuantFormat::Mxfp4 => "mxfp4",
            QuantFormat::Nvfp4 => "nvfp4",
            QuantFormat::Mxfp8 => "mxfp8",
            QuantFormat::Fp8 => "fp8",
        }
    }

    /// MLX's mode (MLX names affine's widths one mode); `None` for `fp8`, which is not
    /// MLX's.
    pub fn mlx_mode(self) -> Option<QuantMode> {
        match self {
            QuantFormat::Affine4 | QuantFormat::Affine8 => Some(QuantMode::Affine),
            QuantFormat::Mxfp4 => Some(QuantMode::Mxfp4),
            QuantFormat::Nvfp4 => Some(QuantMode::Nvfp4),
            QuantFormat::Mxfp8 => Some(QuantMode::Mxfp8),
            QuantFormat::Fp8 => None,
        }
    }

    /// Bits per quantized element.
    pub fn bits(self) -> i32 {
        match self {
            QuantFormat::Affine4 | QuantFormat::Mxfp4 | QuantFormat::Nvfp4 => 4,
            QuantFormat::Affine8 | QuantFormat::Mxfp8 | QuantFormat::Fp8 => 8,
        }
    }

    /// The group sizes MLX quantizes the format with: affine's are a choice, the
    /// microscaling formats fix theirs, and `fp8`'s one group is the whole row
    /// ([`PER_CHANNEL`]).
    pub fn group_sizes(self) -> &'static [i32] {
        match self {
            QuantFormat::Affine4 | QuantFormat::Affine8 => &[32, 64, 128],
            QuantFormat::Mxfp4 | QuantFormat::Mxfp8 => &[32],
            QuantFormat::Nvfp4 => &[16],
            QuantFormat::Fp8 => &[PER_CHANNEL],
        }
    }

    /// The group size used unless another is asked for: mlx-lm's 64 for 4-bit affine
    /// (where the per-group scale and bias are a fifth of the bytes at 32), 32 for 8-bit
    /// affine (the size this project's 8-bit checkpoints were first written with), and the
    /// fixed size of the others.
    pub fn default_group_size(self) -> i32 {
        match self {
            QuantFormat::Affine4 => 64,
            other => other.group_sizes()[0],
        }
    }

    /// The dtype of the per-group scales: bytes (E8M0 or E4M3) for the microscaling
    /// formats, the weights' float dtype (`dtype`) for affine, float32 for `fp8`.
    pub fn scale_dtype(self, dtype: Dtype) -> Dtype {
        match self {
            QuantFormat::Fp8 => Dtype::F32,
            _ if self.has_biases() => dtype,
            _ => Dtype::U8,
        }
    }

    /// Whether the format stores a bias per group.
    pub fn has_biases(self) -> bool {
        self.mlx_mode().is_some_and(QuantMode::has_biases)
    }

    /// The dtype of the stored elements: MLX packs its formats into `uint32` words, `fp8`
    /// stores one byte each.
    pub fn element_dtype(self) -> Dtype {
        match self {
            QuantFormat::Fp8 => Dtype::U8,
            _ => Dtype::U32,
        }
    }

    /// Elements per stored entry (`uint32` word or byte).
    pub fn elements_per_entry(self) -> i32 {
        match self {
            QuantFormat::Fp8 => 1,
            _ => 32 / self.bits(),
        }
    }
}

/// The group size of a format with one scale per output channel (`fp8`): the whole row.
pub const PER_CHANNEL: i32 = 0;

/// What `fp8` rows' lengths must be a multiple of: FP8 tensor cores read rows of 16-byte
/// multiples.
pub const FP8_ROW_MULTIPLE: i32 = 16;

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
            .ok_or_else(|| {
                format!(
                    "unknown quantization mode `{s}` (expected affine4, affine8, mxfp4, nvfp4, \
                     mxfp8 or fp8)"
                )
            })
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

/// `config.json`'s `"quantization"`: how the quantized linear layers are stored, and what
/// quantizing a model asks for. Which layers are quantized is told by the tensors
/// (`<layer>.weight_scale`), not here.
///
/// Read from this project's record (`{"mode": "affine4", "group_size": 64, "bits": 4}`;
/// `fp8`'s has no group size) or from MLX's and mlx-lm's (`{"group_size": 64, "bits": 4}`,
/// optionally with `"mode": "affine"`, `"mxfp4"`, ...); written as this project's,
/// `"bits"` included for MLX's readers. Only combinations MLX quantizes are accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "RecordedQuantization", into = "RecordedQuantization")]
pub struct QuantConfig {
    pub format: QuantFormat,
    pub group_size: i32,
}

/// `"quantization"` as either layout writes it.
#[derive(Serialize, Deserialize)]
struct RecordedQuantization {
    mode: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group_size: Option<i32>,
    bits: Option<i32>,
}

impl TryFrom<RecordedQuantization> for QuantConfig {
    type Error = String;

    fn try_from(r: RecordedQuantization) -> Result<QuantConfig, String> {
        let format = match (r.mode.as_deref(), r.bits) {
            // MLX names the mode, not the width.
            (None | Some("affine"), Some(4)) => QuantFormat::Affine4,
            (None | Some("affine"), Some(8)) => QuantFormat::Affine8,
            (None | Some("affine"), Some(bits)) => {
                return Err(format!(
                    "quantization: affine with {bits} bits is not supported (4 or 8)"
                ))
            }
            (None | Some("affine"), None) => {
                return Err("quantization: affine without \"bits\" (4 or 8)".into())
            }
            (Some(name), _) => name.parse()?,
        };
        match r.bits {
            Some(bits) if bits != format.bits() => Err(format!(
                "quantization: {format} with {bits} bits is not supported ({} bits)",
                format.bits()
            )),
            _ => match (format, r.group_size) {
                (QuantFormat::Fp8, None) => Ok(QuantConfig::new(format)),
                (QuantFormat::Fp8, Some(size)) => Err(format!(
                    "quantization: fp8 has one scale per output channel, not groups of {size}"
                )),
                (_, Some(size)) => QuantConfig::with_group_size(format, size),
                (_, None) => Err(format!("quantization: {format} without \"group_size\"")),
            },
        }
    }
}

impl From<QuantConfig> for RecordedQuantization {
    fn from(config: QuantConfig) -> RecordedQuantization {
        RecordedQuantization {
            mode: Some(config.format.name().to_string()),
            group_size: (config.group_size != PER_CHANNEL).then_some(config.group_size),
            bits: Some(config.bits()),
        }
    }
}

impl QuantConfig {
    /// `format` with its default group size.
    pub fn new(format: QuantFormat) -> QuantConfig {
        QuantConfig {
            format,
            group_size: format.default_group_size(),
        }
    }

    /// `format` with groups of `group_size`, which must be one MLX quantizes it with.
    pub fn with_group_size(format: QuantFormat, group_size: i32) -> Result<QuantConfig, String> {
        let config = QuantConfig { format, group_size };
        config.validate()?;
        Ok(config)
    }

    /// Only group sizes MLX quantizes the format with are accepted (the fields are public,
    /// so a config built by hand is checked here).
    pub fn validate(&self) -> Result<(), String> {
        if self.format == QuantFormat::Fp8 && self.group_size != PER_CHANNEL {
            return Err(format!(
                "quantization: fp8 has one scale per output channel, not groups of {}",
                self.group_size
            ));
        }
        let sizes = self.format.group_sizes();
        if !sizes.contains(&self.group_size) {
            let sizes: Vec<String> = sizes.iter().map(i32::to_string).collect();
            return Err(format!(
                "quantization: {} with group size {} is not supported (group size {})",
                self.format,
                self.group_size,
                sizes.join("/"),
            ));
        }
        Ok(())
    }

    /// Bits per quantized element: the format's.
    pub fn bits(&self) -> i32 {
        self.format.bits()
    }

    /// Quantizes `w` (`[out, in]`, `in` a multiple of the group size) along its last
    /// axis. Lazy: the packed arrays are computed when evaluated.
    #[track_caller]
    pub fn quantize(&self, w: &Array) -> crate::Result<QuantizedWeight> {
        match self.format.mlx_mode() {
            Some(mode) => {
                Quantized::new(w, self.group_size, self.bits(), mode).map(QuantizedWeight::Packed)
            }
            None => Ok(QuantizedWeight::Fp8(Fp8Rows::quantize(w))),
        }
    }

    /// The scales of an `[out, inp]` weight: one per group, or per row for `fp8`.
    pub fn scale_shape(&self, (out, inp): (i32, i32)) -> Vec<i32> {
        match self.group_size {
            PER_CHANNEL => vec![out],
            group => vec![out, inp / group],
        }
    }

    /// Why a weight of `inp` input features cannot be quantized with this config, if it
    /// cannot: groups must divide the row, and `fp8`'s rows must be whole 16-byte
    /// multiples, what FP8 tensor cores read.
    pub fn unquantizable(&self, inp: i32) -> Option<String> {
        match self.group_size {
            PER_CHANNEL => (inp % FP8_ROW_MULTIPLE != 0)
                .then(|| format!("{inp} input features are not a multiple of {FP8_ROW_MULTIPLE}")),
            group => (inp % group != 0).then(|| {
                format!("{inp} input features are not a multiple of the group size {group}")
            }),
        }
    }
}

impl fmt::Display for QuantConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.group_size {
            PER_CHANNEL => write!(f, "{} (per channel)", self.format),
            group => write!(f, "{} (group size {group})", self.format),
        }
    }
}

/// A quantized `[out, in]` weight as its format stores it, and the products it takes part
/// in.
#[derive(Clone)]
pub enum QuantizedWeight {
    /// One of MLX's formats: packed words, per-group scales (and biases).
    Packed(Quantized),
    /// `fp8`: E4M3 bytes with one scale per row.
    Fp8(Fp8Rows),
}

impl QuantizedWeight {
    /// The weight of a layer stored as `weights`, `scales` and `biases` in `config`.
    pub fn stored(
        config: QuantConfig,
        weights: Array,
        scales: Array,
        biases: Option<Array>,
    ) -> QuantizedWeight {
        match config.format.mlx_mode() {
            Some(mode) => QuantizedWeight::Packed(Quantized {
                weights,
                scales,
                biases,
                group_size: config.group_size,
                bits: config.bits(),
                mode,
            }),
            None => QuantizedWeight::Fp8(Fp8Rows {
                values: weights,
                scales,
            }),
        }
    }

    /// The arrays it is made of.
    pub fn arrays(&self) -> Vec<&Array> {
        match self {
            QuantizedWeight::Packed(q) => [Some(&q.weights), Some(&q.scales), q.biases.as_ref()]
                .into_iter()
                .flatten()
                .collect(),
            QuantizedWeight::Fp8(rows) => vec![&rows.values, &rows.scales],
        }
    }

    /// The float weight it stands for, `[out, in]` in `dtype`.
    #[track_caller]
    pub fn dequantize(&self, dtype: Dtype) -> Array {
        match self {
            QuantizedWeight::Packed(q) => q.dequantize(Some(dtype)),
            QuantizedWeight::Fp8(rows) => rows.dequantize(dtype),
        }
    }

    /// `x wᵀ` in `dtype` (`x: [..., in]`) by `path`: `Kernel` is MLX's `quantized_matmul`
    /// for its formats and, for `fp8`, the product of `x` quantized per token (see
    /// [`crate::ops::fp8_matmul`]).
    #[track_caller]
    pub fn matmul(&self, x: &Array, path: MatmulPath, dtype: Dtype) -> Array {
        self.matmul_sharing(x, &mut None, path, dtype)
    }

    /// [`QuantizedWeight::matmul`] of an `x` that other products take too: the `fp8`
    /// kernel path takes `x` quantized per token from `quantized_x` where an earlier
    /// product left it, else quantizes it and leaves it there. (MLX's compiler does not
    /// merge two identical custom kernels, so sharing is up to the caller.)
    #[track_caller]
    pub fn matmul_sharing(
        &self,
        x: &Array,
        quantized_x: &mut Option<Fp8Rows>,
        path: MatmulPath,
        dtype: Dtype,
    ) -> Array {
        match (self, path) {
            (_, MatmulPath::Dequantize) => x.matmul(&self.dequantize(dtype).t()),
            (QuantizedWeight::Packed(q), MatmulPath::Kernel) => q.matmul(x, true),
            (QuantizedWeight::Fp8(w), MatmulPath::Kernel) => {
                let rows = quantized_x.get_or_insert_with(|| Fp8Rows::quantize(x));
                crate::ops::fp8_matmul(rows, w, dtype)
            }
        }
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

    /// How reports name the path for layers of `format`: `fp8`'s kernel is the FP8 product
    /// of [`crate::ops::fp8_matmul`], not MLX's `quantized_matmul`.
    pub fn name_for(self, format: QuantFormat) -> &'static str {
        match (self, format) {
            (MatmulPath::Kernel, QuantFormat::Fp8) => "fp8_matmul",
            _ => self.name(),
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

/// Which product runs `config` fastest with `dtype` activations on the default device for
/// a layer of `shape`, decided by asking the device, not by its name: if MLX has a
/// `quantized_matmul` kernel for the format there (see [`kernel_available`]), both paths
/// are timed on that product and the faster one wins. Costs a few products' time, once per
/// load.
///
/// Both paths are first timed on a slice of the tokens: MLX's CPU kernels are plain loops,
/// 30 to 100 times slower than dequantizing and handing the product to BLAS, and timing
/// one at full size costs seconds per run (half a minute per load for `small`, minutes at
/// Z-Image-Turbo's size). A kernel that loses the slice by [`CLEAR_LOSS`] and would take
/// more than [`SLOW_PRODUCT`] at full size is not timed further.
pub fn probe(config: QuantConfig, dtype: Dtype, shape: ProbeShape) -> MatmulPath {
    if !kernel_available(config, dtype) {
        return MatmulPath::Dequantize;
    }
    let timed = |path, shape| time_product(config, dtype, shape, path);
    let slice = ProbeShape {
        tokens: (shape.tokens / 64).max(32).min(shape.tokens),
        ..shape
    };
    if let (Some(kernel), Some(dequantize)) = (
        timed(MatmulPath::Kernel, slice),
        timed(MatmulPath::Dequantize, slice),
    ) {
        let full = kernel.mul_f64(f64::from(shape.tokens) / f64::from(slice.tokens));
        if kernel > dequantize.mul_f64(CLEAR_LOSS) && full > SLOW_PRODUCT {
            tracing::info!(
                "{config} with {dtype} activations over {} tokens: quantized_matmul {kernel:?}, \
                 dequantize+matmul {dequantize:?}; dequantizing",
                slice.tokens
            );
            return MatmulPath::Dequantize;
        }
    }
    let path = match (
        timed(MatmulPath::Kernel, shape),
        timed(MatmulPath::Dequantize, shape),
    ) {
        (Some(kernel), Some(dequantize)) => {
            tracing::info!(
                "{config} with {dtype} activations: quantized_matmul {kernel:?}, \
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
    tracing::debug!("{config} with {dtype} activations: {path}");
    path
}

/// How much slower than dequantizing a kernel must be on the probe's slice to lose without
/// a full-size timing.
pub const CLEAR_LOSS: f64 = 4.0;
/// A kernel whose full-size product would take longer than this is worth screening out:
/// on a GPU products take milliseconds, and the full-size timing decides as before.
pub const SLOW_PRODUCT: Duration = Duration::from_millis(200);

/// Whether MLX has a `quantized_matmul` kernel for `config` with `dtype` activations on the
/// default device: runs a tiny one and checks that it evaluates. A kernel MLX lacks (an
/// FP8 mode on a GPU backend built without it, say) fails at evaluation, not when the graph
/// is built, so running one is the only reliable test.
pub fn kernel_available(config: QuantConfig, dtype: Dtype) -> bool {
    if config.format == QuantFormat::Fp8 {
        // The product runs anywhere; it pays only on FP8 tensor cores.
        return crate::ops::fp8_kernel(16, 16);
    }
    let group = config.group_size;
    let w = Array::ones(&[group, 2 * group], dtype);
    let x = Array::ones(&[2, 2 * group], dtype);
    match config
        .quantize(&w)
        .and_then(|q| crate::eval([&q.matmul(&x, MatmulPath::Kernel, dtype)]))
    {
        Ok(()) => true,
        Err(error) => {
            tracing::info!("{config} quantized_matmul unavailable ({error}); dequantizing");
            false
        }
    }
}

/// The best of three timings of the `shape` product through `path` (after a warm-up run),
/// or `None` if it fails. Random operands: constant ones can run faster than real data.
fn time_product(
    config: QuantConfig,
    dtype: Dtype,
    shape: ProbeShape,
    path: MatmulPath,
) -> Option<Duration> {
    let key = crate::random::key(0);
    let w = crate::random::normal(&[shape.out, shape.inp], dtype, &key) * 0.02;
    let x = crate::random::normal(&[shape.tokens, shape.inp], dtype, &key);
    let q = config.quantize(&w).ok()?;
    crate::eval(q.arrays()).ok()?;
    let product = || q.matmul(&x, path, dtype);
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
        let err =
            serde_json::from_str::<QuantConfig>(r#"{"mode": "int4", "group_size": 32, "bits": 4}"#)
                .unwrap_err();
        assert!(err.to_string().contains("`int4`"), "{err}");
    }

    #[test]
    fn mlx_records_read_as_the_formats_they_name() {
        let read = |json: &str| serde_json::from_str::<QuantConfig>(json);
        let affine4 = QuantConfig::new(QuantFormat::Affine4);
        assert_eq!(read(r#"{"group_size": 64, "bits": 4}"#).unwrap(), affine4);
        let config = read(r#"{"mode": "affine", "group_size": 32, "bits": 8}"#).unwrap();
        assert_eq!(config, QuantConfig::new(QuantFormat::Affine8));
        let config = read(r#"{"mode": "mxfp4", "group_size": 32, "bits": 4}"#).unwrap();
        assert_eq!(config, QuantConfig::new(QuantFormat::Mxfp4));
        let err = read(r#"{"group_size": 64, "bits": 3}"#).unwrap_err();
        assert!(err.to_string().contains("affine with 3 bits"), "{err}");
    }

    #[test]
    fn fp8_records_one_scale_per_channel_and_no_group_size() {
        let fp8 = QuantConfig::new(QuantFormat::Fp8);
        assert_eq!(fp8.to_string(), "fp8 (per channel)");
        assert_eq!(
            serde_json::to_value(fp8).unwrap(),
            serde_json::json!({"mode": "fp8", "bits": 8})
        );
        let read = |json: &str| serde_json::from_str::<QuantConfig>(json);
        assert_eq!(read(r#"{"mode": "fp8"}"#).unwrap(), fp8);
        let err = read(r#"{"mode": "fp8", "group_size": 32}"#).unwrap_err();
        assert!(err.to_string().contains("not groups of 32"), "{err}");
        let err = QuantConfig::with_group_size(QuantFormat::Fp8, 64).unwrap_err();
        assert!(err.contains("one scale per output channel"), "{err}");
        let err = read(r#"{"mode": "mxfp8", "bits": 8}"#).unwrap_err();
        assert!(
            err.to_string().contains("mxfp8 without \"group_size\""),
            "{err}"
        );
        // Rows of 16-byte multiples quantize per channel; groups must divide the row.
        assert_eq!(fp8.unquantizable(112), None);
        let err = fp8.unquantizable(100).unwrap();
        assert!(
            err.contains("100 input features are not a multiple of 16"),
            "{err}"
        );
        assert_eq!(fp8.scale_shape((8, 100)), [8]);
        let mxfp8 = QuantConfig::new(QuantFormat::Mxfp8);
        assert!(mxfp8.unquantizable(100).is_some());
        assert_eq!(mxfp8.scale_shape((8, 64)), [8, 2]);
    }

    #[test]
    fn other_group_sizes_and_widths_are_rejected() {
        let read = |json: &str| serde_json::from_str::<QuantConfig>(json);
        let err = read(r#"{"mode": "affine8", "group_size": 32, "bits": 4}"#).unwrap_err();
        assert!(
            err.to_string()
                .contains("affine8 with 4 bits is not supported (8 bits)"),
            "{err}"
        );
        let err = read(r#"{"mode": "affine", "group_size": 32}"#).unwrap_err();
        assert!(err.to_string().contains("affine without \"bits\""), "{err}");
        let config = read(r#"{"mode": "nvfp4", "group_size": 16}"#).unwrap();
        assert_eq!(config, QuantConfig::new(QuantFormat::Nvfp4));
        for format in QuantFormat::ALL {
            QuantConfig::new(format).validate().unwrap();
        }
        QuantConfig::with_group_size(QuantFormat::Affine4, 32).unwrap();
        let err = QuantConfig::with_group_size(QuantFormat::Nvfp4, 32).unwrap_err();
        assert!(
            err.contains("nvfp4 with group size 32 is not supported (group size 16)"),
            "{err}"
        );
        let err = QuantConfig::with_group_size(QuantFormat::Affine8, 48).unwrap_err();
        assert!(err.contains("(group size 32/64/128)"), "{err}");
    }

    #[test]
    fn the_probe_finds_the_cpu_kernels() {
        // MLX 0.32 has CPU kernels for every mode (mlx/backend/cpu/quantized.cpp); on a GPU
        // the answer depends on the backend, so only the CPU is pinned down here.
        if !matches!(crate::default_device(), Ok(crate::Device::Cpu)) {
            return;
        }
        for format in QuantFormat::ALL {
            for dtype in [Dtype::F32, Dtype::Bf16] {
                // fp8's product pays only on FP8 tensor cores, which a CPU lacks.
                assert_eq!(
                    kernel_available(QuantConfig::new(format), dtype),
                    format != QuantFormat::Fp8,
                    "{format} {dtype}"
                );
            }
        }
    }

    #[test]
    fn both_timed_paths_compute() {
        let shape = ProbeShape {
            tokens: 8,
            out: 64,
            inp: 128,
        };
        for format in QuantFormat::ALL {
            for path in [MatmulPath::Kernel, MatmulPath::Dequantize] {
                assert!(
                    time_product(QuantConfig::new(format), Dtype::F32, shape, path).is_some(),
                    "{format} {path}"
                );
            }
        }
    }
}
