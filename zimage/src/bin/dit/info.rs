//! `dit info`: what a model is and what it weighs.

use std::path::PathBuf;

use dit::config::DitConfig;
use dit::lora::{self, Adapter};
use dit::weights::{ModelSource, QuantReport};
use mlx::nn::quant::PER_CHANNEL;
use mlx::{Dtype, Module};
use serde_json::{json, Value};
use zimage::pipeline::{LoadOptions, LoraSpec, Pipeline};

use crate::quantize_arg::QuantizeArg;
use crate::{compute_dtype, mib, model_source, CliResult, FloatDtype};

#[derive(clap::Args)]
pub struct Args {
    /// tiny, small, or a checkpoint directory.
    #[arg(long, value_parser = model_source, required_unless_present = "lora")]
    model: Option<ModelSource>,
    /// List what a LoRA adapter file touches (layers, rank, alpha); with --model, also
    /// check that it applies to that transformer.
    #[arg(long)]
    lora: Option<PathBuf>,
    /// Compute dtype the in-memory figures are for (default: f32 on the CPU, bf16 on a GPU).
    #[arg(long, value_enum)]
    dtype: Option<FloatDtype>,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// Describe the model as `--quantize` would load it: linear layers quantized in memory.
    #[command(flatten)]
    quantize: QuantizeArg,
}

pub fn run(args: Args) -> CliResult {
    // Read once: listed here and, with --model, applied to check that it fits.
    let adapter = args.lora.as_deref().map(lora::read).transpose()?;
    let Some(source) = &args.model else {
        if let Some(adapter) = &adapter {
            if args.json {
                println!("{}", adapter_json(adapter));
            } else {
                describe_adapter(adapter);
            }
        }
        return Ok(());
    };
    let dtype = compute_dtype(args.dtype)?;
    let options = LoadOptions {
        quantize: args.quantize.config()?,
        matmul: args.quantize.matmul(),
        keep_text_encoder: true,
        ..LoadOptions::from(dtype)
    };
    let mut pipeline = Pipeline::load(source, options)?;
    if let Some(adapter) = &adapter {
        let spec = LoraSpec {
            path: adapter.path.clone(),
            scale: 1.0,
        };
        pipeline.apply_lora(&spec, adapter, false)?;
    }
    if args.json {
        // One object: the model's report, the adapter's layers under "adapter".
        let mut report = report_json(source, &pipeline, dtype);
        if let (Some(adapter), Value::Object(fields)) = (&adapter, &mut report) {
            fields.insert("adapter".into(), adapter_json(adapter));
        }
        println!("{report}");
        return Ok(());
    }
    if let Some(adapter) = &adapter {
        describe_adapter(adapter);
    }
    let loaded = &pipeline.transformer;
    let model = &loaded.model;
    let c: &DitConfig = &model.config;
    println!("model           {source}");
    let device = crate::device_json();
    println!(
        "runs on         {} ({}, MLX built for {})",
        device["device"].as_str().unwrap_or_default(),
        device["device_name"].as_str().unwrap_or("unnamed"),
        device["backend"].as_str().unwrap_or_default()
    );
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
        loaded.quantization.parameters,
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
    println!(
        "quantization    {}",
        quantization_text(&loaded.quantization, dtype)
    );
    if let (Some(encoder), Some(tokenizer)) = (pipeline.text_encoder(), pipeline.tokenizer()) {
        let e = &encoder.config;
        println!(
            "text encoder    Qwen3: hidden {}, {} of {} layers run, {} heads ({} kv) of {}, \
             vocabulary {} ({:.1} MiB)",
            e.hidden_size,
            encoder.layers.len(),
            e.num_hidden_layers,
            e.num_attention_heads,
            e.num_key_value_heads,
            e.head_dim,
            tokenizer.vocab_size(),
            mib(encoder.nbytes())
        );
        let report = qwen3::weights::quant_report(&mut encoder.clone());
        println!(
            "                quantization {}",
            quantization_text(&report, dtype)
        );
    }
    if let Some(vae) = &pipeline.vae {
        let v = &vae.config;
        println!(
            "vae             AutoencoderKL: {} latent channels, blocks {:?}, tile {} px ({:.1} MiB)",
            v.latent_channels,
            v.block_out_channels,
            v.sample_size,
            mib(vae.nbytes())
        );
    }
    Ok(())
}

/// What `--json` prints (and `dit serve` answers for its model): the transformer's
/// architecture, sizes and quantization, and the other components'.
pub fn report_json(source: &ModelSource, pipeline: &Pipeline, dtype: Dtype) -> Value {
    let loaded = &pipeline.transformer;
    let model = &loaded.model;
    let c: &DitConfig = &model.config;
    json!({
        "model": source.to_string(),
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
        "parameters": loaded.quantization.parameters,
        "tensors": model.parameters().len(),
        "stored_dtypes": loaded.stored_dtypes,
        "stored_bytes": loaded.stored_bytes,
        "compute_dtype": dtype.to_string(),
        "device": crate::device_json(),
        "weights_bytes": model.nbytes(),
        "quantization": quantization_json(&loaded.quantization, model.nbytes()),
        "components": components_json(pipeline),
        "loras": loras_json(pipeline),
    })
}

/// The adapters applied at load: file, scale, layers changed and skipped.
pub fn loras_json(pipeline: &Pipeline) -> Value {
    let adapters = pipeline.adapters.iter().map(|(spec, applied)| {
        json!({
            "path": spec.path.display().to_string(),
            "scale": spec.scale,
            "layers": applied.layers,
            "skipped": applied.skipped.len(),
        })
    });
    Value::Array(adapters.collect())
}

/// The text encoder's and VAE's part of `--json`, for a pipeline (null otherwise).
fn components_json(pipeline: &Pipeline) -> Value {
    let text_encoder = pipeline.text_encoder().map(|encoder| {
        let e = &encoder.config;
        json!({
            "architecture": "Qwen3Model",
            "hidden_size": e.hidden_size,
            "layers": e.num_hidden_layers,
            "layers_run": encoder.layers.len(),
            "heads": e.num_attention_heads,
            "kv_heads": e.num_key_value_heads,
            "head_dim": e.head_dim,
            "vocab_size": pipeline.tokenizer().map(|t| t.vocab_size()),
            "parameters": encoder.num_parameters(),
            "weights_bytes": encoder.nbytes(),
            // A clone shares the arrays: the report only needs the layers by path.
            "quantization": quantization_json(
                &qwen3::weights::quant_report(&mut encoder.clone()),
                encoder.nbytes()
            ),
        })
    });
    let vae = pipeline.vae.as_ref().map(|vae| {
        let v = &vae.config;
        json!({
            "architecture": "AutoencoderKL",
            "parts_loaded": if vae.encoder.is_some() { "encoder+decoder" } else { "decoder" },
            "latent_channels": v.latent_channels,
            "block_out_channels": v.block_out_channels,
            "scaling_factor": v.scaling_factor,
            "shift_factor": v.shift_factor,
            "tile_size": v.sample_size,
            "parameters": vae.num_parameters(),
            "weights_bytes": vae.nbytes(),
            "quantization": {"mode": "none"},
        })
    });
    json!({ "text_encoder": text_encoder, "vae": vae })
}

/// The quantization object of `--json`: mode "none" for a dense model.
pub fn quantization_json(q: &QuantReport, weights_bytes: usize) -> Value {
    let config = q.config.as_ref();
    json!({
        "mode": config.map_or("none", |c| c.format.name()),
        // null for a dense model and for fp8's one scale per output channel.
        "group_size": config.map(|c| c.group_size).filter(|&g| g != PER_CHANNEL),
        "bits": config.map(|c| c.bits()),
        "quantized_layers": q.quantized,
        "dense_layers": q.dense.len(),
        "matmul": matmul_name(q),
        "dense_bytes": q.dense_bytes,
        "weights_bytes": weights_bytes,
    })
}

fn quantization_text(q: &QuantReport, dtype: Dtype) -> String {
    let Some(config) = &q.config else {
        return format!("none ({} linear layers dense)", q.dense.len());
    };
    format!(
        "{config}, {} bits: {} linear layers quantized, {} dense; matmul by {}; \
         {:.1} MiB were they dense in {dtype}",
        config.bits(),
        q.quantized,
        q.dense.len(),
        matmul_name(q).unwrap_or(""),
        mib(q.dense_bytes),
    )
}

fn matmul_name(q: &QuantReport) -> Option<&'static str> {
    Some(q.matmul?.name_for(q.config?.format))
}

/// The adapter's file and its layers: module, file key, rank, alpha, features and the
/// scale `alpha / rank` (`null` for a layer that is no low-rank pair, which `lora::read`
/// does not make).
fn adapter_json(adapter: &Adapter) -> Value {
    let layers: Vec<Value> = adapter
        .layers
        .iter()
        .map(|l| {
            let dims = l.dims();
            json!({
                "module": l.module,
                "key": l.key,
                "rank": dims.map(|d| d.rank),
                "alpha": l.alpha,
                "in": dims.map(|d| d.inp),
                "out": dims.map(|d| d.out),
                "scale": l.scale(),
            })
        })
        .collect();
    json!({ "lora": adapter.path.display().to_string(), "layers": layers })
}

/// One line per adapted layer: its module, rank, alpha and the scale `alpha / rank`.
fn describe_adapter(adapter: &Adapter) {
    println!(
        "lora            {} ({} layers)",
        adapter.path.display(),
        adapter.layers.len()
    );
    for l in &adapter.layers {
        let (Some(d), Some(scale)) = (l.dims(), l.scale()) else {
            println!("  {:<44} not a low-rank pair", l.module);
            continue;
        };
        let alpha = l.alpha.map_or("-".to_string(), |a| a.to_string());
        println!(
            "  {:<44} rank {:>3}  alpha {alpha:>5}  [{}, {}]  scale {scale}",
            l.module, d.rank, d.out, d.inp
        );
    }
}
