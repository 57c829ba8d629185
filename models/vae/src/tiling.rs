//! diffusers' tiled decoding and encoding (`AutoencoderKL.enable_tiling`): the input cut
//! into overlapping square tiles, each run whole, neighbours blended with linear ramps over
//! the overlap, each tile cropped and the crops joined.
//!
//! Blending follows diffusers' in-place updates exactly: tiles are visited row by row, and
//! each is blended with its upper and left neighbours *as already blended*.

use mlx::{concatenate, Array};

use crate::config::{VaeConfig, TILE_OVERLAP};
use crate::{Result, VaeError};

/// Whether to decode or encode in tiles.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Tiling {
    /// What diffusers does after `enable_tiling()`: tile only inputs larger than one tile
    /// (the latents' height or width above `sample_size / 2^(levels-1)` when decoding, the
    /// image's above `sample_size` when encoding).
    Auto,
    /// Always tile, even an input that fits in one tile.
    On,
    /// Never tile: diffusers' default.
    #[default]
    Off,
}

impl Tiling {
    /// Whether an input of `height` x `width` is tiled with tiles of `tile`.
    pub fn applies(self, height: i32, width: i32, tile: i32) -> bool {
        match self {
            Tiling::Auto => height > tile || width > tile,
            Tiling::On => true,
            Tiling::Off => false,
        }
    }
}

/// The geometry of one tiled pass, in diffusers' terms.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TilePlan {
    /// Side of an input tile.
    pub tile: i32,
    /// Distance between the starts of neighbouring input tiles.
    pub stride: i32,
    /// Output rows (columns) blended between neighbours.
    pub blend: i32,
    /// Output rows (columns) kept of each tile.
    pub row_limit: i32,
}

impl TilePlan {
    /// `tiled_decode`: latent tiles of `tile_latent_min_size`, output tiles of
    /// `sample_size`.
    pub fn decode(config: &VaeConfig) -> Result<TilePlan> {
        TilePlan::new(config.tile_latent_size(), config.sample_size)
    }

    /// `_tiled_encode`: image tiles of `sample_size`, moment tiles of
    /// `tile_latent_min_size`.
    pub fn encode(config: &VaeConfig) -> Result<TilePlan> {
        TilePlan::new(config.sample_size, config.tile_latent_size())
    }

    /// diffusers' `int(input_tile · (1 - overlap))`, `int(output_tile · overlap)` and
    /// `output_tile - blend`, in float64 as Python computes them.
    fn new(input_tile: i32, output_tile: i32) -> Result<TilePlan> {
        let stride = (f64::from(input_tile) * (1.0 - TILE_OVERLAP)) as i32;
        let blend = (f64::from(output_tile) * TILE_OVERLAP) as i32;
        if stride < 1 {
            // diffusers fails here too: range() with a step of zero.
            return Err(VaeError::Input(format!(
                "tiles of {input_tile} are too small to overlap (sample_size is too small \
                 for this many levels)"
            )));
        }
        Ok(TilePlan {
            tile: input_tile,
            stride,
            blend,
            row_limit: output_tile - blend,
        })
    }

    /// The tiles' starts along an axis of `len`: `range(0, len, stride)`.
    pub fn starts(&self, len: i32) -> impl Iterator<Item = i32> {
        (0..len.max(0)).step_by(self.stride.max(1) as usize)
    }
}

/// Runs `f` on each tile of `x` (`[N, H, W, C]`), then blends and joins the outputs.
/// Each tile's output is evaluated before the next tile's graph is built, so memory holds
/// one tile's activations at a time, plus the outputs.
pub(crate) fn tiled(
    x: &Array,
    plan: &TilePlan,
    mut f: impl FnMut(&Array) -> Result<Array>,
) -> Result<Array> {
    let [n, h, w, c] = x.dims();
    let mut rows = Vec::new();
    for i in plan.starts(h) {
        let mut row = Vec::new();
        for j in plan.starts(w) {
            // Bounds past the edge are clamped, as Python's slicing does.
            let tile = x.slice(&[0, i, j, 0], &[n, i + plan.tile, j + plan.tile, c], &[]);
            let out = f(&tile)?;
            out.eval()?;
            row.push(out);
        }
        rows.push(row);
    }
    for i in 0..rows.len() {
        for j in 0..rows[i].len() {
            let mut tile = rows[i][j].clone();
            if i > 0 {
                tile = blend_v(&rows[i - 1][j], &tile, plan.blend);
            }
            if j > 0 {
                tile = blend_h(&rows[i][j - 1], &tile, plan.blend);
            }
            rows[i][j] = tile;
        }
    }
    let limit = plan.row_limit;
    let joined_rows: Vec<Array> = rows
        .iter()
        .map(|row| {
            let crops: Vec<Array> = row
                .iter()
                .map(|t| {
                    t.slice(
                        &[0, 0, 0, 0],
                        &[n, limit, limit, t.dim(3).unwrap_or(0)],
                        &[],
                    )
                })
                .collect();
            concatenate(&crops.iter().collect::<Vec<_>>(), 2)
        })
        .collect();
    Ok(concatenate(&joined_rows.iter().collect::<Vec<_>>(), 1))
}

/// diffusers' `blend_v` on NHWC: the first `extent` rows of `b` fade in from the last
/// `extent` rows of `a` (`extent` capped by both heights).
pub fn blend_v(a: &Array, b: &Array, extent: i32) -> Array {
    blend(a, b, extent, 1)
}

/// diffusers' `blend_h` on NHWC: the same across the first `extent` columns.
pub fn blend_h(a: &Array, b: &Array, extent: i32) -> Array {
    blend(a, b, extent, 2)
}

fn blend(a: &Array, b: &Array, extent: i32, axis: i32) -> Array {
    let (len_a, len_b) = (a.dim(axis).unwrap_or(0), b.dim(axis).unwrap_or(0));
    let e = extent.min(len_a).min(len_b);
    if e <= 0 {
        return b.clone();
    }
    // diffusers multiplies by the Python floats `1 - y/e` and `y/e`, which PyTorch rounds
    // once to the tensor's dtype: the same values as these.
    let fade_out: Vec<f32> = (0..e)
        .map(|y| (1.0 - f64::from(y) / f64::from(e)) as f32)
        .collect();
    let fade_in: Vec<f32> = (0..e)
        .map(|y| (f64::from(y) / f64::from(e)) as f32)
        .collect();
    let mut shape = [1, 1, 1, 1];
    shape[axis as usize] = e;
    let ramp = |w: &[f32]| Array::from_slice(w, &shape).astype(b.dtype());
    let head = a.slice_axis(axis, len_a - e, len_a) * ramp(&fade_out)
        + b.slice_axis(axis, 0, e) * ramp(&fade_in);
    concatenate(&[&head, &b.slice_axis(axis, e, len_b)], axis)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlx::Dtype;

    fn column(values: &[f32]) -> Array {
        Array::from_slice(values, &[1, values.len() as i32, 1, 1])
    }

    fn values(a: &Array) -> Vec<f32> {
        a.to_vec::<f32>().unwrap()
    }

    #[test]
    fn blend_v_ramps_over_the_extent() {
        let a = column(&[9.0, 9.0, 1.0, 2.0, 3.0, 4.0]);
        let b = column(&[10.0, 20.0, 30.0, 40.0, 50.0]);
        // e = 4: b[y] = a[2 + y]·(1 - y/4) + b[y]·y/4.
        let expected = [
            1.0,
            2.0 * 0.75 + 20.0 * 0.25,
            3.0 * 0.5 + 15.0,
            4.0 * 0.25 + 30.0,
            50.0,
        ];
        assert_eq!(values(&blend_v(&a, &b, 4)), expected);
        // The extent is capped by the shorter tile.
        let short = column(&[7.0, 8.0]);
        assert_eq!(
            values(&blend_v(&short, &b, 4)),
            [7.0, 8.0 * 0.5 + 10.0, 30.0, 40.0, 50.0]
        );
        assert_eq!(values(&blend_v(&a, &b, 0)), values(&b));
    }

    #[test]
    fn blend_h_works_on_columns() {
        let a = Array::from_slice(&[1f32, 2.0, 3.0, 4.0], &[1, 1, 4, 1]);
        let b = Array::from_slice(&[8f32, 8.0, 8.0], &[1, 1, 3, 1]);
        assert_eq!(values(&blend_h(&a, &b, 2)), [3.0, 4.0 * 0.5 + 4.0, 8.0]);
    }

    #[test]
    fn plans_follow_diffusers_formulas() {
        let config = VaeConfig {
            sample_size: 32,
            block_out_channels: vec![8, 16, 16],
            down_block_types: vec!["DownEncoderBlock2D".into(); 3],
            up_block_types: vec!["UpDecoderBlock2D".into(); 3],
            ..VaeConfig::default()
        };
        let decode = TilePlan::decode(&config).unwrap();
        assert_eq!(
            decode,
            TilePlan {
                tile: 8,
                stride: 6,
                blend: 8,
                row_limit: 24
            }
        );
        assert_eq!(decode.starts(20).collect::<Vec<_>>(), [0, 6, 12, 18]);
        let encode = TilePlan::encode(&config).unwrap();
        assert_eq!(
            encode,
            TilePlan {
                tile: 32,
                stride: 24,
                blend: 2,
                row_limit: 6
            }
        );
        let z_image = TilePlan::decode(&VaeConfig::z_image()).unwrap();
        assert_eq!(
            (z_image.tile, z_image.stride, z_image.blend),
            (128, 96, 256)
        );
        let too_small = VaeConfig {
            sample_size: 4,
            ..VaeConfig::z_image()
        };
        assert!(TilePlan::decode(&too_small).is_err());
    }

    #[test]
    fn modes_decide_as_diffusers() {
        assert!(!Tiling::Auto.applies(8, 8, 8));
        assert!(Tiling::Auto.applies(8, 9, 8));
        assert!(Tiling::On.applies(1, 1, 8));
        assert!(!Tiling::Off.applies(100, 100, 8));
    }

    /// The memory bound: when the next tile is requested, the previous tile's output has
    /// been computed (so its graph, and the activations behind it, are gone).
    #[test]
    fn each_tile_is_evaluated_before_the_next_is_built() {
        let plan = TilePlan {
            tile: 4,
            stride: 3,
            blend: 2,
            row_limit: 3,
        };
        let x = Array::ones(&[1, 8, 8, 1], Dtype::F32);
        let mut previous: Option<Array> = None;
        let mut calls = 0;
        tiled(&x, &plan, |t| {
            if let Some(p) = &previous {
                assert!(
                    p.is_evaluated(),
                    "tile {calls} built before tile {} was computed",
                    calls - 1
                );
            }
            calls += 1;
            let out = t.exp() * 2.0;
            assert!(!out.is_evaluated());
            previous = Some(out.clone());
            Ok(out)
        })
        .unwrap();
        assert_eq!(calls, 9);
    }

    /// A by-hand model of diffusers' tiled loop on a 1-D signal, with its in-place
    /// updates, against `tiled` with the identity as the per-tile function. The blend
    /// (3) is wider than the stride leaves unblended, so the last tile blends with values
    /// of the middle one that were already blended.
    #[test]
    fn identity_tiles_rejoin_as_diffusers_would() {
        let plan = TilePlan {
            tile: 4,
            stride: 3,
            blend: 3,
            row_limit: 3,
        };
        let signal: Vec<f32> = (0..8).map(|i| (i * i) as f32).collect();
        let x = Array::from_slice(&signal, &[1, 1, 8, 1]);
        let out = tiled(&x, &plan, |t| Ok(t.clone())).unwrap();

        // Tiles start at 0, 3, 6: [0..4], [3..7], [6..8].
        let mut tiles: Vec<Vec<f32>> = [0usize, 3, 6]
            .iter()
            .map(|&s| signal[s..(s + 4).min(8)].to_vec())
            .collect();
        for j in 1..tiles.len() {
            let e = 3.min(tiles[j - 1].len()).min(tiles[j].len());
            for k in 0..e {
                let left = tiles[j - 1][tiles[j - 1].len() - e + k];
                let w = k as f32 / e as f32;
                tiles[j][k] = left * (1.0 - w) + tiles[j][k] * w;
            }
        }
        let expected: Vec<f32> = tiles
            .iter()
            .flat_map(|t| t[..3.min(t.len())].to_vec())
            .collect();
        assert_eq!(out.shape(), &[1, 1, 8, 1]);
        // Within rounding: the ramps here are computed in float32, not float64.
        for (ours, theirs) in values(&out).iter().zip(&expected) {
            assert!(
                (ours - theirs).abs() <= 1e-5 * theirs.abs().max(1.0),
                "{ours} vs {theirs}"
            );
        }
        assert_eq!(out.dtype(), Dtype::F32);
    }
}
