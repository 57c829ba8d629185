//! `--quantize MODE [--group-size N]` (alias `--fp8`): dense linear layers quantized at
//! load, and `--quantized-matmul` for how quantized layers compute, for the commands that
//! load a model.

use mlx::nn::{MatmulPath, QuantConfig, QuantFormat};

#[derive(clap::Args)]
pub struct QuantizeArg {
    /// Quantize the dense linear layers (transformer and text encoder) at load: affine4,
    /// affine8, mxfp4, nvfp4, mxfp8 or fp8 (E4M3 per channel, for FP8 tensor cores).
    #[arg(long, alias = "fp8", value_name = "MODE")]
    quantize: Option<QuantFormat>,
    /// The affine modes' group size: 32, 64 or 128 (default 64 for affine4, 32 for
    /// affine8; the other modes fix theirs).
    #[arg(long, requires = "quantize")]
    group_size: Option<i32>,
    /// How quantized layers compute: auto times the quantized kernel (MLX's
    /// quantized_matmul; fp8's FP8 product) against dequantize-then-matmul on the device
    /// once at load and takes the faster.
    #[arg(long, value_enum, default_value = "auto")]
    quantized_matmul: MatmulArg,
}

/// `--quantized-matmul`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum MatmulArg {
    Auto,
    Kernel,
    Dequantize,
}

impl QuantizeArg {
    /// The quantization asked for, if any.
    pub fn config(&self) -> Result<Option<QuantConfig>, String> {
        self.quantize
            .map(|mode| quant_config(mode, self.group_size))
            .transpose()
    }

    /// The matmul path asked for; `None` probes.
    pub fn matmul(&self) -> Option<MatmulPath> {
        match self.quantized_matmul {
            MatmulArg::Auto => None,
            MatmulArg::Kernel => Some(MatmulPath::Kernel),
            MatmulArg::Dequantize => Some(MatmulPath::Dequantize),
        }
    }
}

/// `mode` with `--group-size` or its default.
pub fn quant_config(mode: QuantFormat, group_size: Option<i32>) -> Result<QuantConfig, String> {
    match group_size {
        None => Ok(QuantConfig::new(mode)),
        Some(size) => QuantConfig::with_group_size(mode, size)
            .map_err(|message| format!("--group-size {size}: {message}")),
    }
}
