//! Text generation: the prompt's prefill, then a decoding loop in `mlx::steps` that carries
//! only the KV caches and the last token. mlx-lm's `generate_step` keeps its caches with
//! explicit evaluations; here the loop's inferred Keep set is exactly that state, and
//! `.async_eval()` computes step `n` while the graph of step `n + 1` is built (the seed's
//! `Keep`/`Free`/`AsyncEval` loop, with none of the three calls).

use std::cell::RefCell;
use std::ops::ControlFlow;
use std::path::Path;
use std::rc::Rc;
use std::time::{Duration, Instant};

use mlx::scope::StepStats;
use mlx::Array;
use serde_json::Value;

use crate::causal_lm::Qwen3ForCausalLM;
use crate::sample::{token_key, Sampling};
use crate::{Qwen3Error, Result};

/// Prompt tokens per prefill pass: longer prompts run in chunks, which bounds the
/// attention scores' memory (`heads · chunk · capacity` floats).
pub const PREFILL_CHUNK: usize = 512;

/// What `generation_config.json` says about generating: stop tokens and, when
/// `do_sample`, the sampling settings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GenerationConfig {
    /// `eos_token_id`: one id or a list.
    pub eos_token_ids: Vec<u32>,
    /// The sampling transformers' `generate` would use (greedy unless `do_sample`).
    pub sampling: Option<Sampling>,
}

impl GenerationConfig {
    /// Reads `generation_config.json` in `dir`; without one, the `eos_token_id` of
    /// `config.json` (what transformers derives the generation config from).
    pub fn from_dir(dir: &Path) -> Result<GenerationConfig> {
        let path = dir.join("generation_config.json");
        if path.is_file() {
            return GenerationConfig::from_file(&path, true);
        }
        GenerationConfig::from_file(&dir.join("config.json"), false)
    }

    fn from_file(path: &Path, sampling: bool) -> Result<GenerationConfig> {
        let text = crate::read_text(path)?;
        GenerationConfig::parse(&text, sampling).map_err(|message| Qwen3Error::Config {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses a generation config's JSON (`sampling`: read the sampling keys too).
    pub fn parse(text: &str, sampling: bool) -> std::result::Result<GenerationConfig, String> {
        let value: Value = serde_json::from_str(text).map_err(crate::one_line)?;
        let Value::Object(map) = value else {
            return Err("not a JSON object".into());
        };
        let id = |v: &Value| {
            v.as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| format!("eos_token_id must hold token ids, found {v}"))
        };
        let eos_token_ids = match map.get("eos_token_id") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(ids)) => ids.iter().map(id).collect::<std::result::Result<_, _>>()?,
            Some(other) => vec![id(other)?],
        };
        let number = |key: &str, default: f64| -> std::result::Result<f64, String> {
            match map.get(key) {
                None | Some(Value::Null) => Ok(default),
                Some(v) => v
                    .as_f64()
                    .ok_or_else(|| format!("{key} must be a number, found {v}")),
            }
        };
        let sampling = if !sampling {
            None
        } else if map.get("do_sample").and_then(Value::as_bool) == Some(true) {
            // transformers' defaults for absent keys.
            let top_k = number("top_k", 50.0)?;
            if !(top_k >= 0.0 && top_k.fract() == 0.0) {
                return Err(format!("top_k must be a count, found {top_k}"));
            }
            let s = Sampling {
                temperature: number("temperature", 1.0)? as f32,
                top_k: top_k as usize,
                top_p: number("top_p", 1.0)? as f32,
            };
            s.validate()?;
            Some(s)
        } else {
            Some(Sampling::GREEDY)
        };
        Ok(GenerationConfig {
            eos_token_ids,
            sampling,
        })
    }
}

/// How to generate.
#[derive(Clone, Debug, PartialEq)]
pub struct GenerateOptions {
    /// New tokens at most (a stop token included).
    pub max_tokens: usize,
    pub sampling: Sampling,
    /// Seeds the sampler's keys (see [`token_key`]).
    pub seed: u64,
    /// Tokens that end the generation (kept as its last token).
    pub stop_tokens: Vec<u32>,
    /// Record active and peak memory after every this many new tokens (0: never).
    pub memory_every: usize,
    /// Record each decoding step's boundary statistics, cache capacity and trace count.
    pub record_steps: bool,
}

impl Default for GenerateOptions {
    fn default() -> GenerateOptions {
        GenerateOptions {
            max_tokens: 256,
            sampling: Sampling::GREEDY,
            seed: 0,
            stop_tokens: Vec::new(),
            memory_every: 0,
            record_steps: false,
        }
    }
}

/// Memory after a number of new tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemorySample {
    pub tokens: usize,
    pub active_bytes: usize,
    /// The peak since the previous sample.
    pub peak_bytes: usize,
}

/// One decoding step, when [`GenerateOptions::record_steps`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StepRecord {
    /// The cache's capacity during the step.
    pub capacity: usize,
    /// [`mlx::compile::trace_count`] after the step's graph was built.
    pub traces: u64,
    /// The step loop's report at the step's boundary.
    pub stats: StepStats,
}

/// A finished generation.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Generation {
    /// The new tokens, a stop token included.
    pub tokens: Vec<u32>,
    pub prompt_tokens: usize,
    /// Whether a stop token ended it.
    pub stopped: bool,
    /// From the start to the first new token.
    pub prefill_time: Duration,
    /// From the first new token to the last.
    pub decode_time: Duration,
    pub memory: Vec<MemorySample>,
    /// Peak memory up to the end of the prefill.
    pub prefill_peak_bytes: usize,
    /// Peak memory while decoding (when memory is sampled, else 0).
    pub decode_peak_bytes: usize,
    pub steps: Vec<StepRecord>,
}

impl Generation {
    /// Prompt tokens per second of prefill (the first new token included in the time).
    pub fn prefill_tokens_per_second(&self) -> f64 {
        per_second(self.prompt_tokens, self.prefill_time)
    }

    /// New tokens after the first, per second.
    pub fn decode_tokens_per_second(&self) -> f64 {
        per_second(self.tokens.len().saturating_sub(1), self.decode_time)
    }
}

fn per_second(n: usize, time: Duration) -> f64 {
    if n == 0 || time.is_zero() {
        0.0
    } else {
        n as f64 / time.as_secs_f64()
    }
}

impl Qwen3ForCausalLM {
    /// Generates after `prompt` (token ids, with the chat template already applied):
    /// calls `on_token` with each new token as soon as it is known (not with a stop
    /// token; `Break` ends the generation), and returns the tokens and timings.
    pub fn generate(
        &self,
        prompt: &[u32],
        options: &GenerateOptions,
        mut on_token: impl FnMut(u32) -> ControlFlow<()>,
    ) -> Result<Generation> {
        options.sampling.validate().map_err(Qwen3Error::Input)?;
        self.check_whole()?;
        let vocab = self.config().vocab_size as u32;
        if prompt.is_empty() {
            return Err(Qwen3Error::Input(
                "generation needs a prompt of at least one token".into(),
            ));
        }
        if let Some(bad) = prompt.iter().find(|&&id| id >= vocab) {
            return Err(Qwen3Error::Input(format!(
                "token id {bad} is outside the vocabulary of {vocab}"
            )));
        }
        let mut generation = Generation {
            prompt_tokens: prompt.len(),
            ..Generation::default()
        };
        if options.max_tokens == 0 {
            return Ok(generation);
        }
        let started = Instant::now();
        let sampling = options.sampling;
        let mut cache = self.new_cache(1);

        // The prefill: each chunk's caches are what its iteration carries.
        let chunks: Vec<&[u32]> = prompt.chunks(PREFILL_CHUNK).collect();
        let mut logits = None;
        for (i, chunk) in mlx::steps(chunks.iter().enumerate()) {
            let ids: Vec<i32> = chunk.iter().map(|&id| id as i32).collect();
            let ids = Array::from_slice(&ids, &[1, ids.len() as i32]);
            let out = self.forward_unchecked(&ids, &mut cache)?;
            // Only the last chunk's logits are needed: the others are never computed.
            if i + 1 == chunks.len() {
                logits = Some(out);
            }
        }
        let Some(logits) = logits else {
            return Ok(generation); // unreachable: the prompt is not empty
        };
        // The prefill loop's boundaries evaluated the caches and the logits.
        generation.prefill_peak_bytes = mlx::memory::peak_memory();
        let mut token = sampling.sample_unchecked(&logits, &token_key(options.seed, 0));
        drop(logits);

        let stats = Rc::new(RefCell::new(Vec::new()));
        let mut loop_ = mlx::steps(0..options.max_tokens).async_eval();
        if options.record_steps || options.memory_every > 0 {
            let stats = Rc::clone(&stats);
            loop_ = loop_.on_boundary(move |s| stats.borrow_mut().push(s.clone()));
        }
        let mut shapes = Vec::new();
        let mut decode_started = started;
        for i in loop_ {
            // Step i + 1's graph is built while token i computes; reading token i waits.
            let next = if i + 1 < options.max_tokens {
                let logits = self.forward_unchecked(&token.reshape(&[1, 1]), &mut cache)?;
                Some(sampling.sample_unchecked(&logits, &token_key(options.seed, i + 1)))
            } else {
                None
            };
            shapes.push((cache.capacity(), mlx::compile::trace_count()));
            let id = token.item::<i32>()? as u32;
            if i == 0 {
                generation.prefill_time = started.elapsed();
                decode_started = Instant::now();
            }
            generation.tokens.push(id);
            if options.stop_tokens.contains(&id) {
                generation.stopped = true;
                break;
            }
            if on_token(id).is_break() {
                break;
            }
            // The last iteration has no next token: the loop ends after its boundary.
            if let Some(next) = next {
                token = next;
            }
        }
        generation.decode_time = decode_started.elapsed();

        let stats = stats.take();
        generation.decode_peak_bytes = stats.iter().map(|s| s.peak_bytes).max().unwrap_or(0);
        if options.memory_every > 0 {
            let mut peak = 0;
            for (i, s) in stats.iter().enumerate() {
                peak = peak.max(s.peak_bytes);
                if (i + 1) % options.memory_every == 0 {
                    generation.memory.push(MemorySample {
                        tokens: i + 1,
                        active_bytes: s.active_bytes,
                        peak_bytes: peak,
                    });
                    peak = 0;
                }
            }
        }
        if options.record_steps {
            generation.steps = stats
                .into_iter()
                .zip(shapes)
                .map(|(stats, (capacity, traces))| StepRecord {
                    capacity,
                    traces,
                    stats,
                })
                .collect();
        }
        Ok(generation)
    }
}
