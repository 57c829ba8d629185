//! `dit encode`: a prompt's embeddings, as diffusers' `ZImagePipeline.encode_prompt` returns
//! them, for checking against other implementations.

use std::collections::BTreeMap;
use std::path::PathBuf;

use dit::weights::ModelSource;
use mlx::io::save_safetensors;
use mlx::Array;
use zimage::pipeline;
use zimage::prompt::{self, MAX_SEQUENCE_LENGTH};

use crate::{compute_dtype, model_source, CliResult, FloatDtype};

#[derive(clap::Args)]
pub struct Args {
    /// tiny, small, or a diffusers pipeline folder.
    #[arg(long, value_parser = model_source)]
    model: ModelSource,
    /// The prompt (empty is valid: the chat template alone).
    #[arg(long)]
    prompt: String,
    /// Prompt tokens kept (longer prompts are cut on the right).
    #[arg(long, default_value_t = MAX_SEQUENCE_LENGTH)]
    max_sequence_length: usize,
    /// Compute dtype (default: f32 on the CPU, bf16 on a GPU).
    #[arg(long, value_enum)]
    dtype: Option<FloatDtype>,
    /// Where to write tensors `prompt_embeds` [L, D] float32 and `input_ids` [L] int32.
    #[arg(long)]
    out: PathBuf,
}

pub fn run(args: Args) -> CliResult {
    if args.max_sequence_length == 0 {
        return Err("--max-sequence-length must be at least 1".into());
    }
    let dtype = compute_dtype(args.dtype)?;
    let (tokenizer, encoder) = pipeline::load_text_encoder(&args.model, dtype)?;
    let embeds = prompt::encode(&tokenizer, &encoder, &args.prompt, args.max_sequence_length)?;
    if embeds.dropped > 0 {
        eprintln!(
            "warning: the prompt is {} tokens with the chat template; the last {} were dropped \
             (--max-sequence-length {})",
            embeds.input_ids.len() + embeds.dropped,
            embeds.dropped,
            args.max_sequence_length
        );
    }
    let ids = Array::from_slice(&embeds.input_ids, &[embeds.input_ids.len() as i32]);
    save_safetensors(
        &args.out,
        [("prompt_embeds", &embeds.embeds), ("input_ids", &ids)],
        &BTreeMap::new(),
    )?;
    println!(
        "{} tokens, embeddings {:?}; wrote {}",
        embeds.input_ids.len(),
        embeds.embeds.shape(),
        args.out.display()
    );
    Ok(())
}
