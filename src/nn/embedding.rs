//! Token embeddings.

use crate::{Array, Dtype, Module};

/// `nn.Embedding`: row `i` of `weight` (`[vocab, dim]`) for token `i`.
#[derive(Module, Clone)]
pub struct Embedding {
    pub weight: Array,
}

impl Embedding {
    /// Zeros of `vocab` rows of `dim` (what loading fills in).
    pub fn zeros(vocab: i32, dim: i32, dtype: Dtype) -> Embedding {
        Embedding {
            weight: Array::zeros(&[vocab, dim], dtype),
        }
    }

    /// `ids: [...]` integers to `[..., dim]`.
    #[track_caller]
    pub fn forward(&self, ids: &Array) -> Array {
        self.weight.take(ids, 0)
    }

    /// Hidden states `[..., dim]` to logits `[..., vocab]` through the same matrix: the
    /// output head of models with tied embeddings.
    #[track_caller]
    pub fn as_linear(&self, x: &Array) -> Array {
        x.matmul(&self.weight.t())
    }
}
