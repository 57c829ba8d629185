//! Prompt to embeddings, exactly as diffusers' `ZImagePipeline._encode_prompt`: the prompt
//! as one user message through the chat template (generation prompt added, thinking
//! enabled), tokenized and cut on the right at `max_sequence_length`, through the text
//! encoder; the output of its second-to-last layer (`hidden_states[-2]`) at the real
//! tokens is the embedding.
//!
//! diffusers pads to `max_sequence_length` and masks the padding; with causal attention
//! and right padding the real tokens' states do not depend on the padding, so the
//! unpadded sequence is encoded.

use mlx::{Array, Dtype};
use qwen3::{Qwen3Model, Tokenizer};

use crate::Result;

/// The pipeline's default `max_sequence_length`.
pub const MAX_SEQUENCE_LENGTH: usize = 512;

/// One prompt, encoded.
#[derive(Clone)]
pub struct PromptEmbeds {
    /// `[L, D]` float32: the real tokens' embeddings, as diffusers' list entry.
    pub embeds: Array,
    /// The `L` token ids.
    pub input_ids: Vec<i32>,
    /// Tokens cut off past `max_sequence_length`.
    pub dropped: usize,
}

/// Encodes `prompt` with `encoder`, which may hold only the layers the embedding needs.
pub fn encode(
    tokenizer: &Tokenizer,
    encoder: &Qwen3Model,
    prompt: &str,
    max_sequence_length: usize,
) -> Result<PromptEmbeds> {
    let ids = tokenizer.prompt_ids(prompt, max_sequence_length)?;
    let len = ids.ids.len() as i32;
    let input = Array::from_slice(&ids.ids, &[1, len]);
    let hidden = encoder.hidden_states(&input, encoder.encoder_depth())?;
    let embeds = hidden.reshape(&[len, -1]).astype(Dtype::F32);
    embeds.check()?;
    Ok(PromptEmbeds {
        embeds,
        input_ids: ids.ids,
        dropped: ids.dropped,
    })
}
