//! Choosing the next token from logits: greedy, or sampled with a temperature, top-k and
//! top-p (nucleus) filtering, in transformers' order (temperature, then top-k, then top-p).
//! Sampling takes an explicit key, so a seed reproduces a generation.

use mlx::{random, Array, Dtype};

use crate::{Qwen3Error, Result};

/// How the next token is chosen.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Sampling {
    /// 0 is greedy (the most likely token); otherwise logits are divided by it.
    pub temperature: f32,
    /// Keep only the `top_k` most likely tokens; 0 keeps all.
    pub top_k: usize,
    /// Keep the most likely tokens whose probabilities sum to at least `top_p`; 1 keeps all.
    pub top_p: f32,
}

impl Sampling {
    /// The most likely token every time.
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_k: 0,
        top_p: 1.0,
    };

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0
    }

    /// Values a sampler cannot use, as a message naming the setting.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return Err(format!(
                "temperature must be 0 (greedy) or positive, found {}",
                self.temperature
            ));
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return Err(format!("top_p must be in (0, 1], found {}", self.top_p));
        }
        Ok(())
    }

    /// The next token of each row of `logits: [batch, vocab]` (float32), `[batch]` int32,
    /// drawing with `key` (unused when greedy). Lazy.
    pub fn sample(&self, logits: &Array, key: &Array) -> Result<Array> {
        self.validate().map_err(Qwen3Error::Input)?;
        Ok(self.sample_unchecked(logits, key))
    }

    pub(crate) fn sample_unchecked(&self, logits: &Array, key: &Array) -> Array {
        if self.is_greedy() {
            return logits.argmax(-1, false).astype(Dtype::I32);
        }
        let vocab = logits.dim(-1).unwrap_or(0);
        // Filters that keep everything are left out of the graph.
        let top_k = match i32::try_from(self.top_k) {
            Ok(k) if k > 0 && k < vocab => k,
            _ => 0,
        };
        let top_p = if self.top_p < 1.0 { self.top_p } else { 1.0 };
        sample_graph(logits, key, self.temperature, top_k, top_p)
    }
}

/// The key of the token at `index` of a generation seeded with `seed`: derived from both,
/// not split from a carried key, so that the key is not state a decoding loop keeps.
pub fn token_key(seed: u64, index: usize) -> Array {
    // SplitMix64's finalizer: neighbouring indices give unrelated seeds.
    let mut z = seed ^ (index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    random::key(z ^ (z >> 31))
}

/// Temperature, top-k (`0`: off), top-p (`1`: off), then a categorical draw by the Gumbel
/// trick (`argmax(logits + Gumbel noise)`, as MLX's `categorical` does).
#[mlx::graph]
fn sample_graph(logits: &Array, key: &Array, temperature: f32, top_k: i32, top_p: f32) -> Array {
    let neg_inf = f32::NEG_INFINITY;
    let mut logits = logits / temperature;
    if top_k > 0 {
        // The k-th largest logit; ties with it stay in.
        let kth = logits.topk(top_k, -1).min(-1, true);
        logits = mlx::where_(&logits.less(&kth), neg_inf, &logits);
    }
    if top_p < 1.0 {
        let probs = logits.softmax(-1);
        let sorted = -(-&probs).sort(-1); // descending
                                          // A token stays when the mass of the more likely ones is below top_p: the smallest
                                          // set reaching top_p, and always the most likely token.
        let before = sorted.cumsum(-1, false, false);
        let kept = before.less(top_p).astype(Dtype::I32).sum(-1, true);
        let threshold = sorted.take_along_axis(&(kept - 1), -1);
        logits = mlx::where_(&probs.less(&threshold), neg_inf, &logits);
    }
    let uniform = random::uniform(0.0, 1.0, logits.shape(), Dtype::F32, key);
    let gumbel = -(-uniform.log()).log();
    (logits + gumbel).argmax(-1, false).astype(Dtype::I32)
}
