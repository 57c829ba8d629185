//! `dit`: draw pictures from prompts with Z-Image, run its parts one at a time (prompt
//! encoding, one transformer pass, decoding), write and describe checkpoints. Errors print
//! as one `error:` line and exit with status 1.

mod decode;
mod encode;
mod forward;
mod generate;
mod info;
mod init;
mod inputs;
mod quantize;
mod quantize_arg;
mod serve;
mod teacache_fit;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use dit::weights::ModelSource;
use mlx::{Device, Dtype};
use vae::Tiling;
use zimage::folder::ModelDir;

#[derive(Parser)]
#[command(name = "dit", version, about = "Z-Image text-to-image on MLX")]
struct Cli {
    /// Where to compute: cpu, gpu or gpu:N (default: the GPU where MLX has one).
    #[arg(long, global = true, value_parser = parse_device)]
    device: Option<Device>,
    #[command(subcommand)]
    command: Command,
}

fn parse_device(arg: &str) -> Result<Device, String> {
    arg.parse()
        .map_err(|e: mlx::ParseDeviceError| e.to_string())
}

// Parsed once per run: the size of the largest variant costs nothing worth boxing for.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// Draw a picture from a prompt.
    Generate(generate::Args),
    /// Encode a prompt to the transformer's caption embeddings.
    Encode(encode::Args),
    /// Decode latents to a picture with the VAE.
    Decode(decode::Args),
    /// Run one transformer forward pass on inputs from a safetensors file.
    Forward(forward::Args),
    /// Write a built-in pipeline as a diffusers pipeline folder.
    Init(init::Args),
    /// Describe a model: architecture, sizes, dtypes, bytes, quantization.
    Info(info::Args),
    /// Fit TeaCache's polynomial for a model.
    TeacacheFit(teacache_fit::Args),
    /// Write a pipeline or checkpoint with its linear layers quantized (4 or 8 bits).
    Quantize(quantize::Args),
    /// Serve OpenAI's images API (POST /v1/images/generations) with the model loaded once.
    Serve(serve::Args),
}

/// A floating-point dtype for `--dtype`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FloatDtype {
    F32,
    Bf16,
    F16,
}

impl FloatDtype {
    pub fn dtype(self) -> Dtype {
        match self {
            FloatDtype::F32 => Dtype::F32,
            FloatDtype::Bf16 => Dtype::Bf16,
            FloatDtype::F16 => Dtype::F16,
        }
    }
}

/// The compute dtype: `--dtype` if given, else float32 on the CPU (where bfloat16 matmul
/// has no BLAS) and bfloat16 on a GPU.
pub fn compute_dtype(chosen: Option<FloatDtype>) -> mlx::Result<Dtype> {
    Ok(match chosen {
        Some(d) => d.dtype(),
        None => match mlx::default_device()? {
            Device::Cpu => Dtype::F32,
            Device::Gpu(_) => Dtype::Bf16,
        },
    })
}

/// The device commands run on, with its name where the backend tells: what `info` and
/// `generate --json` report.
pub fn device_json() -> serde_json::Value {
    let device = mlx::default_device().unwrap_or(Device::Cpu);
    let name = device.info().ok().and_then(|info| info.name);
    serde_json::json!({
        "backend": mlx::backend().name(),
        "device": device.to_string(),
        "device_name": name,
    })
}

/// Says why the first compiled step waits on a GPU whose kernel cache is empty: MLX
/// compiles its CUDA kernels at first use (about a minute), then keeps them on disk.
pub fn note_kernel_compilation() {
    if !matches!(mlx::default_device(), Ok(Device::Gpu(_))) {
        return;
    }
    let Some(dir) = std::env::var_os("MLX_PTX_CACHE_DIR").map(std::path::PathBuf::from) else {
        return;
    };
    let cached = std::fs::read_dir(&dir).map_or(0, |entries| entries.count());
    if cached == 0 {
        eprintln!(
            "note: compiling MLX's GPU kernels for this machine (about a minute, once; cached in {})",
            dir.display()
        );
    }
}

/// Parses `--model`.
pub fn model_source(arg: &str) -> Result<ModelSource, String> {
    if arg.is_empty() {
        return Err("expected tiny, small or a model directory".into());
    }
    Ok(ModelSource::parse(arg))
}

/// The transformer of `--model`: a built-in one, a transformer checkpoint, or a pipeline
/// folder's `transformer/`.
pub fn transformer_source(source: &ModelSource) -> Result<ModelSource, zimage::Error> {
    Ok(match source {
        ModelSource::Builtin(_) => source.clone(),
        ModelSource::Dir(dir) => {
            ModelSource::Dir(ModelDir::inspect(dir)?.transformer().to_path_buf())
        }
    })
}

/// `--vae-tiling`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum TilingArg {
    Auto,
    On,
    Off,
}

impl TilingArg {
    pub fn tiling(self) -> Tiling {
        match self {
            TilingArg::Auto => Tiling::Auto,
            TilingArg::On => Tiling::On,
            TilingArg::Off => Tiling::Off,
        }
    }
}

/// A command's result: its error is printed as one `error:` line.
pub type CliResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

/// Bytes as MiB, for reports.
pub fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn main() -> ExitCode {
    // A bug must still end in one line, not a backtrace.
    std::panic::set_hook(Box::new(|info| {
        let message = mlx::compile::panic_message(info.payload());
        let place = info
            .location()
            .map(|l| format!(" at {}:{}", l.file(), l.line()))
            .unwrap_or_default();
        eprintln!("error: internal error{place}: {message}");
    }));
    let cli = Cli::parse();
    let device = cli.device.unwrap_or_else(mlx::preferred_device);
    if let Err(error) = device.info().and_then(|_| mlx::set_default_device(device)) {
        let reason = match &error {
            mlx::Error::Runtime { message, .. } => message.clone(),
            other => other.to_string(),
        };
        eprintln!("error: --device {device}: {reason}");
        return ExitCode::FAILURE;
    }
    let result = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Encode(args) => encode::run(args),
        Command::Decode(args) => decode::run(args),
        Command::Forward(args) => forward::run(args),
        Command::Init(args) => init::run(args),
        Command::Info(args) => info::run(args),
        Command::TeacacheFit(args) => teacache_fit::run(args),
        Command::Quantize(args) => quantize::run(args),
        Command::Serve(args) => serve::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
