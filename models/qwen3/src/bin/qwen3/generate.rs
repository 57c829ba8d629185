//! `qwen3 generate`: the prompt through the chat template, prefill, and a decoding loop
//! whose text streams to stdout as tokens arrive; `--json` ends stdout with a report.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::ValueEnum;
use indicatif::{ProgressBar, ProgressStyle};
use mlx::{memory, Device, Dtype, Module};
use qwen3::{
    weights, GenerateOptions, GenerationConfig, Message, Qwen3Config, Qwen3ForCausalLM, Sampling,
    StreamDecoder, Tokenizer,
};
use serde_json::json;

use crate::CliResult;

/// How often `--json` samples memory, in new tokens.
const MEMORY_EVERY: usize = 64;

#[derive(clap::Args)]
pub struct Args {
    /// A model directory (config.json, safetensors, tokenizer.json, optionally
    /// generation_config.json), or `tiny` for the built-in random model.
    #[arg(long)]
    model: String,
    /// The user message; the chat template wraps it.
    #[arg(long)]
    prompt: String,
    /// New tokens at most.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy (default: generation_config.json's, else greedy).
    #[arg(long, allow_negative_numbers = true)]
    temperature: Option<f32>,
    /// Nucleus sampling: keep the most likely tokens whose probabilities reach this, in
    /// (0, 1] (default: generation_config.json's, else 1).
    #[arg(long, allow_negative_numbers = true)]
    top_p: Option<f32>,
    /// Keep only this many most likely tokens; 0 keeps all (default:
    /// generation_config.json's, else 0).
    #[arg(long)]
    top_k: Option<usize>,
    /// Seed of the sampler.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Render the chat template with enable_thinking=false (Qwen3's empty think block).
    #[arg(long)]
    no_thinking: bool,
    /// Compute dtype (default: f32 on the CPU, bf16 on a GPU).
    #[arg(long, value_enum)]
    dtype: Option<FloatDtype>,
    /// End stdout with one JSON object: speeds, memory, timings.
    #[arg(long)]
    json: bool,
}

/// A floating-point dtype for `--dtype`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum FloatDtype {
    F32,
    Bf16,
    F16,
}

/// The model, its tokenizer and its generation config.
struct Loaded {
    model: Qwen3ForCausalLM,
    tokenizer: Tokenizer,
    generation: GenerationConfig,
}

fn load(source: &str, dtype: Dtype) -> Result<Loaded, qwen3::Qwen3Error> {
    if source == "tiny" {
        let model = weights::builtin_causal_lm(&Qwen3Config::tiny(), dtype)?;
        return Ok(Loaded {
            model,
            tokenizer: Tokenizer::builtin()?,
            generation: GenerationConfig::default(),
        });
    }
    let dir = PathBuf::from(source);
    let model = weights::load_causal_lm(&dir, dtype)?;
    Ok(Loaded {
        model,
        tokenizer: Tokenizer::from_dir(&dir)?,
        generation: GenerationConfig::from_dir(&dir)?,
    })
}

/// The sampling of the flags over the generation config's (or greedy).
fn sampling(args: &Args, config: &GenerationConfig) -> Result<Sampling, String> {
    let base = config.sampling.unwrap_or(Sampling::GREEDY);
    let sampling = Sampling {
        temperature: args.temperature.unwrap_or(base.temperature),
        top_k: args.top_k.unwrap_or(base.top_k),
        top_p: args.top_p.unwrap_or(base.top_p),
    };
    if !(sampling.temperature.is_finite() && sampling.temperature >= 0.0) {
        return Err(format!(
            "--temperature must be 0 (greedy) or positive, found {}",
            sampling.temperature
        ));
    }
    if !(sampling.top_p > 0.0 && sampling.top_p <= 1.0) {
        return Err(format!(
            "--top-p must be in (0, 1], found {}",
            sampling.top_p
        ));
    }
    Ok(sampling)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

pub fn run(args: Args) -> CliResult {
    if args.model.is_empty() {
        return Err("--model: expected tiny or a model directory".into());
    }
    let dtype = match args.dtype {
        Some(FloatDtype::F32) => Dtype::F32,
        Some(FloatDtype::Bf16) => Dtype::Bf16,
        Some(FloatDtype::F16) => Dtype::F16,
        // bfloat16 matmul on the CPU has no BLAS: float32 there.
        None => match mlx::default_device()? {
            Device::Cpu => Dtype::F32,
            Device::Gpu(_) => Dtype::Bf16,
        },
    };
    let spinner = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg} {elapsed}") {
        spinner.set_style(style);
    }
    spinner.set_message("loading the model");
    spinner.enable_steady_tick(Duration::from_millis(120));
    let load_started = Instant::now();
    let loaded = load(&args.model, dtype)?;
    let load_time = load_started.elapsed();
    let sampling = sampling(&args, &loaded.generation)?;

    let text = loaded.tokenizer.apply_chat_template(
        &[Message::user(args.prompt.as_str())],
        true,
        !args.no_thinking,
    )?;
    let prompt = loaded.tokenizer.encode(&text)?;
    let mut stop_tokens = loaded.generation.eos_token_ids.clone();
    stop_tokens.extend(loaded.tokenizer.eos_token_id());
    let options = GenerateOptions {
        max_tokens: args.max_tokens,
        sampling,
        seed: args.seed,
        stop_tokens,
        memory_every: if args.json { MEMORY_EVERY } else { 0 },
        record_steps: false,
    };
    spinner.set_message(format!("prefill of {} tokens", prompt.len()));

    let mut stdout = std::io::stdout().lock();
    let mut decoder = StreamDecoder::new(&loaded.tokenizer);
    let mut failure: Option<Box<dyn std::error::Error>> = None;
    let mut first = true;
    let _ = memory::reset_peak_memory();
    let generation = loaded.model.generate(&prompt, &options, |id| {
        if first {
            spinner.finish_and_clear();
            first = false;
        }
        let written = decoder
            .push(id)
            .map_err(Box::<dyn std::error::Error>::from)
            .and_then(|piece| {
                stdout.write_all(piece.as_bytes())?;
                Ok(stdout.flush()?)
            });
        match written {
            Ok(()) => ControlFlow::Continue(()),
            // A closed pipe or a decoding error ends the generation; it is reported below.
            Err(error) => {
                failure = Some(error);
                ControlFlow::Break(())
            }
        }
    })?;
    spinner.finish_and_clear();
    if let Some(error) = failure {
        return Err(error);
    }
    let rest = decoder.finish()?;
    writeln!(stdout, "{rest}")?;
    if args.json {
        let config = loaded.model.config();
        let report = json!({
            "model": args.model,
            "compute_dtype": dtype.to_string(),
            "prompt_tokens": generation.prompt_tokens,
            "generated_tokens": generation.tokens.len(),
            "stopped": generation.stopped,
            "prefill_tokens_per_second": generation.prefill_tokens_per_second(),
            "decode_tokens_per_second": generation.decode_tokens_per_second(),
            "prefill_ms": ms(generation.prefill_time),
            "decode_ms": ms(generation.decode_time),
            "load_ms": ms(load_time),
            "memory": generation.memory.iter().map(|m| json!({
                "tokens": m.tokens,
                "active_bytes": m.active_bytes,
                "peak_bytes": m.peak_bytes,
            })).collect::<Vec<_>>(),
            "active_bytes": memory::active_memory(),
            "prefill_peak_bytes": generation.prefill_peak_bytes,
            "decode_peak_bytes": generation.decode_peak_bytes,
            "weights_bytes": loaded.model.nbytes(),
            "temperature": sampling.temperature,
            "top_k": sampling.top_k,
            "top_p": sampling.top_p,
            "seed": args.seed,
            "layers": config.num_hidden_layers,
            "hidden_size": config.hidden_size,
            "tie_word_embeddings": config.tie_word_embeddings,
        });
        writeln!(stdout, "{report}")?;
    }
    Ok(())
}
