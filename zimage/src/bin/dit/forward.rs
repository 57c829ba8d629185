//! `dit forward`: one transformer forward pass, for checking against other implementations.

use std::collections::BTreeMap;
use std::path::PathBuf;

use dit::weights::{self, LoadOptions, ModelSource};
use dit::DitError;
use mlx::io::{load_safetensors, save_safetensors};
use mlx::Dtype;

use crate::inputs;
use crate::quantize_arg::QuantizeArg;
use crate::{compute_dtype, model_source, transformer_source, CliResult, FloatDtype};

#[derive(clap::Args)]
pub struct Args {
    /// tiny, small, or a checkpoint directory.
    #[arg(long, value_parser = model_source)]
    model: ModelSource,
    /// Tensors `latents` [B, C, H, W], `timestep` [B] (the transformer's `t`, before
    /// t_scale), `cap_feats` [B, L, cap_feat_dim], optional `cap_lens` [B] (int32).
    #[arg(long)]
    inputs: PathBuf,
    /// Where to write the output tensor `out` [B, C, H, W] (float32).
    #[arg(long)]
    out: PathBuf,
    /// Compute dtype (default: f32 on the CPU, bf16 on a GPU).
    #[arg(long, value_enum)]
    dtype: Option<FloatDtype>,
    /// Run the graph functions eagerly instead of compiled.
    #[arg(long)]
    no_compile: bool,
    #[command(flatten)]
    quantize: QuantizeArg,
}

pub fn run(args: Args) -> CliResult {
    mlx::compile::set_eager(args.no_compile);
    let file = load_safetensors(&args.inputs)?;
    let path = args.inputs.as_path();
    let get = |name| inputs::required_float(&file.tensors, path, name);
    let (latents, t, cap_feats) = (get("latents")?, get("timestep")?, get("cap_feats")?);
    // The model checks shapes; the lengths default to every caption token being real.
    let cap_lens = match file.tensors.get("cap_lens") {
        Some(lens) if lens.dtype() == Dtype::I32 && lens.ndim() == 1 => lens.to_vec::<i32>()?,
        Some(lens) => {
            return Err(format!(
                "{}: `cap_lens` must be int32 [batch], found {} {:?}",
                path.display(),
                lens.dtype(),
                lens.shape()
            )
            .into())
        }
        None => {
            let (batch, tokens) = (latents.dim(0), cap_feats.dim(1));
            vec![tokens.unwrap_or(0); batch.unwrap_or(0).max(0) as usize]
        }
    };
    let options = LoadOptions {
        quantize: args.quantize.config()?,
        matmul: args.quantize.matmul(),
        ..LoadOptions::from(compute_dtype(args.dtype)?)
    };
    let loaded = weights::load(&transformer_source(&args.model)?, options)?;
    let out = loaded
        .model
        .forward(&latents, &t, &cap_feats, &cap_lens)
        .map_err(|e| match e {
            // Shapes and dtypes of the file's tensors: name it.
            DitError::Input(message) => format!("{}: {message}", path.display()).into(),
            other => Box::<dyn std::error::Error>::from(other),
        })?
        .astype(Dtype::F32);
    save_safetensors(&args.out, [("out", &out)], &BTreeMap::new())?;
    println!("wrote `out` {:?} to {}", out.shape(), args.out.display());
    Ok(())
}
