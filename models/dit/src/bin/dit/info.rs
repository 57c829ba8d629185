//! `dit info`: what a model is and what it weighs.

use dit::config::DitConfig;
use dit::weights::{self, ModelSource};
use mlx::Module;
use serde_json::json;

use crate::{compute_dtype, model_source, CliResult, FloatDtype};

#[derive(clap::Args)]
pub struct Args {
    /// tiny, small, or a checkpoint directory.
    #[arg(long, value_parser = model_source)]
    model: ModelSource,
    /// Compute dtype the in-memory figures are for (default: f32 on the CPU, bf16 on a GPU).
    #[arg(long, value_enum)]
    dtype: Option<FloatDtype>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

pub fn run(args: Args) -> CliResult {
    let dtype = compute_dtype(args.dtype)?;
    let loaded = weights::load(&args.model, dtype)?;
    let model = &loaded.model;
    let c: &DitConfig = &model.config;
    let report = json!({
        "model": args.model.to_string(),
        "architecture": "ZImageTransformer2DModel",
        "dim": c.dim,
        "heads": c.n_heads,
        "head_dim": c.head_dim(),
        "axes_dims": c.axes_dims,
        "axes_lens": c.axes_lens,
        "ffn_hidden": c.ffn_hidden(),
        "in_channels": c.in_channels,
        "patch_size": c.patch_size(),
        "cap_feat_dim": c.cap_feat_dim,
        "layers": {
            "main": model.layers.len(),
            "noise_refiner": model.noise_refiner.len(),
            "context_refiner": model.context_refiner.len(),
        },
        "parameters": model.num_parameters(),
        "tensors": model.parameters().len(),
        "stored_dtypes": loaded.stored_dtypes,
        "stored_bytes": loaded.stored_bytes,
        "compute_dtype": dtype.to_string(),
        "weights_bytes": model.nbytes(),
        "quantization": "none",
    });
    if args.json {
        println!("{report}");
        return Ok(());
    }
    let mib = |b: usize| b as f64 / (1024.0 * 1024.0);
    println!("model           {}", args.model);
    println!("architecture    ZImageTransformer2DModel");
    println!(
        "dims            dim {}, {} heads of {} (RoPE axes {:?}), feed-forward {}",
        c.dim,
        c.n_heads,
        c.head_dim(),
        c.axes_dims,
        c.ffn_hidden()
    );
    println!(
        "layers          {} main, {} noise refiner, {} context refiner",
        model.layers.len(),
        model.noise_refiner.len(),
        model.context_refiner.len()
    );
    println!(
        "inputs          {} latent channels, patch {}, caption features {}",
        c.in_channels,
        c.patch_size(),
        c.cap_feat_dim
    );
    println!(
        "parameters      {} in {} tensors",
        model.num_parameters(),
        model.parameters().len()
    );
    let stored: Vec<String> = loaded
        .stored_dtypes
        .iter()
        .map(|(d, n)| format!("{n} {d}"))
        .collect();
    println!(
        "stored          {} ({:.1} MiB)",
        stored.join(", "),
        mib(loaded.stored_bytes)
    );
    println!("in memory       {} ({:.1} MiB)", dtype, mib(model.nbytes()));
    println!("quantization    none");
    Ok(())
}
