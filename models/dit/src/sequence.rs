//! How a batch becomes token sequences, as diffusers' standard (non-omni) mode lays them out.
//!
//! - Image: latents `[B, C, H, W]` become `(H/2)·(W/2)` patch tokens, padded to a multiple
//!   of 32 with the learned image pad token. Token `(h, w)` sits at RoPE position
//!   `(cap_len + 1, h, w)`, where `cap_len` is the item's *padded* caption length; pad
//!   tokens sit at `(0, 0, 0)`.
//! - Caption: item `i`'s `len_i` tokens are padded to a multiple of 32 with the learned
//!   caption pad token; token `j` (pad tokens included) sits at `(1 + j, 0, 0)`.
//! - Pad tokens take part in attention. Items whose padded captions differ in length are
//!   padded again to the longest one; those rows are masked out as keys (an attention mask
//!   of `[B, 1, 1, tokens]`) and their outputs are never read.
//! - The main layers see `[image tokens, caption tokens]` per item.
//!
//! Everything here depends only on shapes and caption lengths, so a sampler builds it once.

use mlx::{Array, Dtype, Module};

use crate::config::{DitConfig, SEQ_MULTI_OF};
use crate::{DitError, Result};
use mlx::nn::rope::RopeTable;

/// `n` rounded up to a multiple of 32.
pub fn padded_len(n: i32) -> i32 {
    // Saturating: a hostile length then fails the RoPE bounds check, not an overflow.
    n.saturating_add(SEQ_MULTI_OF - 1) / SEQ_MULTI_OF * SEQ_MULTI_OF
}

/// The per-batch arrays the transformer's forward pass needs besides its inputs.
#[derive(Module, Clone)]
pub struct Sequence {
    /// `[B, caption tokens, 1]`, true for real caption tokens (the rest become pad tokens).
    pub cap_valid: Array,
    /// `[B, 1, 1, caption tokens]`, or `None` when every padded caption is equally long.
    pub cap_mask: Option<Array>,
    /// `[B, 1, 1, image + caption tokens]`, or `None` when no item needs masking.
    pub joint_mask: Option<Array>,
    pub x_rope: RopeTable,
    pub cap_rope: RopeTable,
}

impl Sequence {
    /// The main layers' table: image tokens then caption tokens, as their sequence is.
    pub fn joint_rope(&self) -> RopeTable {
        let join = |a: &Array, b: &Array| mlx::concatenate(&[a, b], 1);
        RopeTable {
            cos: join(&self.x_rope.cos, &self.cap_rope.cos),
            sin: join(&self.x_rope.sin, &self.cap_rope.sin),
        }
    }
}

/// The sizes a [`Sequence`] was built for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    pub batch: i32,
    /// Patch tokens along height and width.
    pub grid: (i32, i32),
    /// Image tokens with padding.
    pub x_len: i32,
    /// Real caption tokens per item.
    pub cap_lens: Vec<i32>,
    /// Caption tokens every item is padded to (the longest padded caption).
    pub cap_len: i32,
}

impl Layout {
    /// Checks latents `[B, C, H, W]` and caption lengths against the model.
    pub fn new(config: &DitConfig, latent_hw: (i32, i32), cap_lens: &[i32]) -> Result<Layout> {
        let p = config.patch_size();
        let (h, w) = latent_hw;
        if h <= 0 || w <= 0 || h % p != 0 || w % p != 0 {
            return Err(DitError::Input(format!(
                "latent height and width must be positive multiples of the patch size {p}, \
                 found {h}x{w}"
            )));
        }
        if cap_lens.is_empty() {
            return Err(DitError::Input("the batch is empty".into()));
        }
        if let Some(bad) = cap_lens.iter().find(|&&n| n < 1) {
            return Err(DitError::Input(format!(
                "every caption needs at least one token, found a `cap_lens` of {bad}"
            )));
        }
        let grid = (h / p, w / p);
        let cap_len = cap_lens.iter().map(|&n| padded_len(n)).max().unwrap_or(0);
        let axes = &config.axes_lens;
        // Frame positions run to cap_len + 1 (the image's frame index); diffusers indexes
        // its frequency tables with them, so they must stay below axes_lens.
        if cap_len + 1 >= axes[0] || grid.0 > axes[1] || grid.1 > axes[2] {
            return Err(DitError::Input(format!(
                "{} caption tokens and a {}x{} token grid exceed the model's RoPE axes_lens {:?}",
                cap_len, grid.0, grid.1, axes
            )));
        }
        // The joint sequences, padded, index MLX arrays with 32-bit sizes (a config's
        // axes_lens may allow a grid whose product does not fit).
        let per_item = i64::from(grid.0) * i64::from(grid.1) + i64::from(cap_len) + 2 * 32;
        if per_item * cap_lens.len() as i64 > i64::from(i32::MAX) {
            return Err(DitError::Input(format!(
                "a batch of {} with a {}x{} token grid and {cap_len} caption tokens overflows \
                 32-bit sizes",
                cap_lens.len(),
                grid.0,
                grid.1
            )));
        }
        Ok(Layout {
            batch: cap_lens.len() as i32,
            grid,
            x_len: padded_len(grid.0 * grid.1),
            cap_lens: cap_lens.to_vec(),
            cap_len,
        })
    }

    /// Real image tokens per item.
    pub fn image_tokens(&self) -> i32 {
        self.grid.0 * self.grid.1
    }

    /// Builds the masks and RoPE tables.
    pub fn sequence(&self, config: &DitConfig) -> Sequence {
        let (b, cap_len) = (self.batch as usize, self.cap_len);
        let padded: Vec<i32> = self.cap_lens.iter().map(|&n| padded_len(n)).collect();

        let mut cap_valid = Vec::with_capacity(b * cap_len as usize);
        let mut cap_pos = Vec::with_capacity(cap_valid.capacity());
        let mut x_pos = Vec::with_capacity(b * self.x_len as usize);
        for (&len, &total) in self.cap_lens.iter().zip(&padded) {
            for j in 0..cap_len {
                cap_valid.push(j < len);
                // Rows past the item's padded caption are masked; any position will do.
                cap_pos.push([if j < total { 1 + j } else { 0 }, 0, 0]);
            }
            for h in 0..self.grid.0 {
                for w in 0..self.grid.1 {
                    x_pos.push([total + 1, h, w]);
                }
            }
            x_pos.resize(
                x_pos.len() + (self.x_len - self.image_tokens()) as usize,
                [0, 0, 0],
            );
        }

        let mask = |lens: Vec<i32>, width: i32| -> Option<Array> {
            if lens.iter().all(|&n| n == width) {
                return None;
            }
            let keep: Vec<bool> = lens
                .iter()
                .flat_map(|&n| (0..width).map(move |j| j < n))
                .collect();
            Some(Array::from_slice(&keep, &[self.batch, 1, 1, width]))
        };
        let joint: Vec<i32> = padded.iter().map(|&n| self.x_len + n).collect();
        Sequence {
            cap_valid: Array::from_slice(&cap_valid, &[self.batch, cap_len, 1]),
            cap_mask: mask(padded, cap_len),
            joint_mask: mask(joint, self.x_len + cap_len),
            x_rope: rope_table(config, &x_pos, self.batch),
            cap_rope: rope_table(config, &cap_pos, self.batch),
        }
    }
}

/// RoPE angles for 3-axis positions, as diffusers' `RopeEmbedder` computes them: per axis
/// of `d` channels, frequencies `theta^(-2k/d)` and angles `position · frequency` in
/// float64, rounded to float32 before `cos`/`sin`; the axes' tables side by side.
fn rope_table(config: &DitConfig, positions: &[[i32; 3]], batch: i32) -> RopeTable {
    let theta = f64::from(config.rope_theta);
    let freqs: Vec<(usize, f64)> = config
        .axes_dims
        .iter()
        .enumerate()
        .flat_map(|(axis, &d)| {
            (0..d / 2).map(move |k| (axis, 1.0 / theta.powf(f64::from(2 * k) / f64::from(d))))
        })
        .collect();
    let mut cos = Vec::with_capacity(positions.len() * freqs.len());
    let mut sin = Vec::with_capacity(cos.capacity());
    for position in positions {
        for &(axis, freq) in &freqs {
            let angle = f64::from((f64::from(position[axis]) * freq) as f32);
            cos.push(angle.cos() as f32);
            sin.push(angle.sin() as f32);
        }
    }
    RopeTable::from_pairs(&cos, &sin, batch, positions.len() as i32 / batch)
}

/// `[B, C, H, W]` latents to `[B, (H/p)(W/p), p·p·C]` patch tokens (row-major over the
/// grid; within a patch, `(ph, pw, c)`).
pub fn patchify(latents: &Array, p: i32) -> Array {
    let [b, c, h, w] = latents.dims();
    latents
        .reshape(&[b, c, h / p, p, w / p, p])
        .transpose(&[0, 2, 4, 3, 5, 1])
        .reshape(&[b, (h / p) * (w / p), p * p * c])
}

/// The inverse of [`patchify`] for the first `(H/p)(W/p)` tokens.
pub fn unpatchify(tokens: &Array, p: i32, channels: i32, (h, w): (i32, i32)) -> Array {
    let b = tokens.dim(0).unwrap_or(0);
    let (gh, gw) = (h / p, w / p);
    tokens
        .slice_axis(1, 0, gh * gw)
        .reshape(&[b, gh, gw, p, p, channels])
        .transpose(&[0, 5, 1, 3, 2, 4])
        .reshape(&[b, channels, h, w])
}

/// Caption features `[B, L, D]` cut or zero-padded to `[B, cap_len, D]` in `dtype`.
pub fn fit_captions(cap_feats: &Array, cap_len: i32, dtype: Dtype) -> Array {
    let l = cap_feats.dim(1).unwrap_or(0);
    let fitted = if l >= cap_len {
        cap_feats.slice_axis(1, 0, cap_len)
    } else {
        cap_feats.pad(&[(0, 0), (0, cap_len - l), (0, 0)], 0.0)
    };
    fitted.astype(dtype)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_is_to_multiples_of_32() {
        assert_eq!(
            [1, 31, 32, 33, 64, 65].map(padded_len),
            [32, 32, 32, 64, 64, 96]
        );
    }

    #[test]
    fn masks_exist_only_when_lengths_differ() {
        let config = DitConfig::tiny();
        let same = Layout::new(&config, (8, 8), &[3, 30])
            .unwrap()
            .sequence(&config);
        assert!(same.cap_mask.is_none() && same.joint_mask.is_none());
        let layout = Layout::new(&config, (6, 6), &[40, 3]).unwrap();
        assert_eq!((layout.x_len, layout.cap_len), (32, 64));
        let seq = layout.sequence(&config);
        let joint = seq.joint_mask.unwrap().to_vec::<bool>().unwrap();
        let valid: Vec<usize> = joint
            .chunks(96)
            .map(|r| r.iter().filter(|&&k| k).count())
            .collect();
        assert_eq!(valid, [96, 64]);
        let cap_valid = seq.cap_valid.to_vec::<bool>().unwrap();
        assert_eq!(cap_valid.iter().filter(|&&k| k).count(), 43);
    }

    #[test]
    fn patchify_round_trips() {
        let x = Array::arange(0.0, 2.0 * 3.0 * 4.0 * 6.0, 1.0, Dtype::F32).reshape(&[2, 3, 4, 6]);
        let tokens = patchify(&x, 2);
        assert_eq!(tokens.shape(), [2, 6, 12]);
        // Token 1 is the patch at grid (0, 1): rows 0-1, columns 2-3; channels last.
        let first = tokens
            .slice(&[0, 1, 0], &[1, 2, 3], &[1, 1, 1])
            .to_vec::<f32>()
            .unwrap();
        assert_eq!(first, [2.0, 26.0, 50.0]);
        let back = unpatchify(&tokens, 2, 3, (4, 6));
        assert_eq!(back.to_vec::<f32>().unwrap(), x.to_vec::<f32>().unwrap());
    }

    #[test]
    fn sizes_beyond_the_rope_tables_are_errors() {
        let config = DitConfig::tiny();
        assert!(Layout::new(&config, (2 * 513, 8), &[4]).is_err());
        assert!(Layout::new(&config, (8, 8), &[1100]).is_err());
        assert!(Layout::new(&config, (7, 8), &[4]).is_err());
        assert!(Layout::new(&config, (8, 8), &[0]).is_err());
        assert!(Layout::new(&config, (8, 8), &[i32::MAX]).is_err());
    }

    #[test]
    fn grids_whose_token_counts_overflow_i32_are_errors() {
        // A config may allow RoPE tables this long; the grid's product still must fit.
        let config = DitConfig {
            axes_lens: vec![1024, 1 << 20, 1 << 20],
            ..DitConfig::tiny()
        };
        let side = 2 * (1 << 16);
        let message = match Layout::new(&config, (side, side), &[4]) {
            Err(DitError::Input(message)) => message,
            other => panic!("not an input error: {:?}", other.map(|l| l.x_len)),
        };
        assert!(
            message.contains("65536x65536") && message.contains("32-bit"),
            "{message}"
        );
        // One that fits is accepted.
        assert!(Layout::new(&config, (2 * 1024, 2 * 1024), &[4]).is_ok());
    }
}
