//! The autoencoder's `config.json`, with diffusers' keys and defaults
//! (`AutoencoderKL.__init__`), and the built-in model sizes.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::{Result, VaeError};

/// The only down and up block kinds AutoencoderKL's published checkpoints use.
const DOWN_BLOCK: &str = "DownEncoderBlock2D";
const UP_BLOCK: &str = "UpDecoderBlock2D";
/// The epsilon of every GroupNorm of the encoder and decoder (fixed in diffusers).
pub const NORM_EPS: f32 = 1e-6;
/// The share of a tile that overlaps its neighbour (diffusers' `tile_overlap_factor`).
pub const TILE_OVERLAP: f64 = 0.25;

/// The architecture, as diffusers writes it to `config.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct VaeConfig {
    pub in_channels: i32,
    pub out_channels: i32,
    pub latent_channels: i32,
    pub block_out_channels: Vec<i32>,
    pub layers_per_block: i32,
    pub norm_num_groups: i32,
    pub down_block_types: Vec<String>,
    pub up_block_types: Vec<String>,
    pub act_fn: String,
    pub use_quant_conv: bool,
    pub use_post_quant_conv: bool,
    pub mid_block_add_attention: bool,
    pub scaling_factor: f64,
    pub shift_factor: Option<f64>,
    /// Only tiling reads it: the tile size in pixels. diffusers accepts a pair too, and
    /// then reads its first entry.
    #[serde(deserialize_with = "size_or_pair")]
    pub sample_size: i32,
    /// Carried for the pipelines that normalize latents per channel; decoding ignores them.
    pub latents_mean: Option<Vec<f64>>,
    pub latents_std: Option<Vec<f64>>,
    /// Checked only to refuse other classes (`AutoencoderKLWan`, ...) by name.
    #[serde(rename = "_class_name", skip_serializing)]
    pub class_name: Option<String>,
}

impl Default for VaeConfig {
    /// diffusers' defaults (`AutoencoderKL.__init__`).
    fn default() -> VaeConfig {
        VaeConfig {
            in_channels: 3,
            out_channels: 3,
            latent_channels: 4,
            block_out_channels: vec![64],
            layers_per_block: 1,
            norm_num_groups: 32,
            down_block_types: vec![DOWN_BLOCK.into()],
            up_block_types: vec![UP_BLOCK.into()],
            act_fn: "silu".into(),
            use_quant_conv: true,
            use_post_quant_conv: true,
            mid_block_add_attention: true,
            scaling_factor: 0.18215,
            shift_factor: None,
            sample_size: 32,
            latents_mean: None,
            latents_std: None,
            class_name: None,
        }
    }
}

/// `1024` or `[1024, 1024]`: diffusers uses the first entry of a pair.
fn size_or_pair<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<i32, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        One(i32),
        Many(Vec<i32>),
    }
    match Size::deserialize(d)? {
        Size::One(n) => Ok(n),
        Size::Many(sizes) => sizes
            .first()
            .copied()
            .ok_or_else(|| serde::de::Error::custom("sample_size must not be an empty list")),
    }
}

impl VaeConfig {
    /// Z-Image's VAE (the Flux VAE): 16 latent channels, 8x downsampling.
    pub fn z_image() -> VaeConfig {
        VaeConfig {
            latent_channels: 16,
            block_out_channels: vec![128, 256, 512, 512],
            layers_per_block: 2,
            down_block_types: vec![DOWN_BLOCK.into(); 4],
            up_block_types: vec![UP_BLOCK.into(); 4],
            use_quant_conv: false,
            use_post_quant_conv: false,
            scaling_factor: 0.3611,
            shift_factor: Some(0.1159),
            sample_size: 1024,
            ..VaeConfig::default()
        }
    }

    /// The built-in model for tests: Z-Image's latent layout (16 channels, 8x) with a few
    /// channels per level.
    pub fn tiny() -> VaeConfig {
        VaeConfig {
            block_out_channels: vec![16, 32, 32, 32],
            layers_per_block: 1,
            norm_num_groups: 8,
            sample_size: 256,
            ..VaeConfig::z_image()
        }
    }

    /// The built-in model for benchmarks: Z-Image's layout at a quarter of its widths.
    pub fn small() -> VaeConfig {
        VaeConfig {
            block_out_channels: vec![32, 64, 128, 128],
            norm_num_groups: 32,
            sample_size: 512,
            ..VaeConfig::z_image()
        }
    }

    /// A built-in size by name: `tiny` or `small`.
    pub fn builtin(name: &str) -> Option<VaeConfig> {
        match name {
            "tiny" => Some(VaeConfig::tiny()),
            "small" => Some(VaeConfig::small()),
            _ => None,
        }
    }

    /// Reads and checks `config.json`.
    pub fn from_file(path: &Path) -> Result<VaeConfig> {
        let text = std::fs::read_to_string(path).map_err(|source| VaeError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        VaeConfig::parse(&text).map_err(|message| VaeError::Config {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses and checks the text of a `config.json`.
    pub fn parse(text: &str) -> std::result::Result<VaeConfig, String> {
        let config: VaeConfig = serde_json::from_str(text).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    /// What diffusers would reject, and what this implementation does not support.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if let Some(class) = self.class_name.as_deref().filter(|c| *c != "AutoencoderKL") {
            return Err(format!(
                "_class_name is {class}; only AutoencoderKL is supported"
            ));
        }
        // Bounds far beyond any real model, so that shapes derived from them cannot
        // overflow an i32.
        let bounded = [
            ("in_channels", self.in_channels, 1, 1 << 12),
            ("out_channels", self.out_channels, 1, 1 << 12),
            ("latent_channels", self.latent_channels, 1, 1 << 12),
            ("layers_per_block", self.layers_per_block, 1, 64),
            ("norm_num_groups", self.norm_num_groups, 1, 1 << 12),
            ("sample_size", self.sample_size, 1, 1 << 20),
        ];
        if let Some((key, value, lo, hi)) = bounded.iter().find(|(_, v, lo, hi)| v < lo || v > hi) {
            return Err(format!(
                "{key} must be between {lo} and {hi}, found {value}"
            ));
        }
        let levels = self.block_out_channels.len();
        if levels == 0 {
            return Err("block_out_channels must not be empty".into());
        }
        if levels > 12 {
            return Err(format!(
                "{levels} levels in block_out_channels; at most 12 are supported"
            ));
        }
        for (i, &c) in self.block_out_channels.iter().enumerate() {
            if !(1..=1 << 14).contains(&c) {
                return Err(format!(
                    "block_out_channels[{i}] must be between 1 and 16384, found {c}"
                ));
            }
            if c % self.norm_num_groups != 0 {
                return Err(format!(
                    "block_out_channels[{i}] = {c} is not divisible by norm_num_groups {}",
                    self.norm_num_groups
                ));
            }
        }
        for (key, types, expected) in [
            ("down_block_types", &self.down_block_types, DOWN_BLOCK),
            ("up_block_types", &self.up_block_types, UP_BLOCK),
        ] {
            if types.len() != levels {
                return Err(format!(
                    "{key} has {} entries for {levels} block_out_channels",
                    types.len()
                ));
            }
            if let Some(other) = types.iter().find(|t| *t != expected) {
                return Err(format!("{key}: {other} is not supported, only {expected}"));
            }
        }
        // diffusers' get_activation maps both names to SiLU.
        if !matches!(self.act_fn.as_str(), "silu" | "swish") {
            return Err(format!(
                "act_fn {} is not supported, only silu",
                self.act_fn
            ));
        }
        if !self.scaling_factor.is_finite() || self.scaling_factor == 0.0 {
            return Err(format!(
                "scaling_factor must be finite and non-zero, found {}",
                self.scaling_factor
            ));
        }
        if self.shift_factor.is_some_and(|s| !s.is_finite()) {
            return Err("shift_factor must be finite".into());
        }
        Ok(())
    }

    /// Downsampling levels: `len(block_out_channels) - 1`.
    pub fn downsamplings(&self) -> u32 {
        self.block_out_channels.len().saturating_sub(1) as u32
    }

    /// Pixels per latent along each axis: `2^(levels - 1)`.
    pub fn pixels_per_latent(&self) -> i32 {
        1 << self.downsamplings()
    }

    /// diffusers' `tile_latent_min_size`: `int(sample_size / 2^(levels - 1))`.
    pub fn tile_latent_size(&self) -> i32 {
        (f64::from(self.sample_size) / f64::from(self.pixels_per_latent())) as i32
    }

    /// The config as diffusers writes it.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = serde_json::to_value(self).unwrap_or_default();
        if let Some(map) = value.as_object_mut() {
            map.insert("_class_name".into(), "AutoencoderKL".into());
            map.insert("_diffusers_version".into(), "0.42.1".into());
            // Ignored here, written so that diffusers loads the file as it was meant.
            map.insert("force_upcast".into(), true.into());
        }
        value
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtins_are_valid_with_z_image_latents() {
        for config in [VaeConfig::tiny(), VaeConfig::small(), VaeConfig::z_image()] {
            config.validate().unwrap();
            assert_eq!(
                (config.latent_channels, config.pixels_per_latent()),
                (16, 8)
            );
        }
        assert_eq!(VaeConfig::z_image().tile_latent_size(), 128);
        assert_eq!(VaeConfig::builtin("small"), Some(VaeConfig::small()));
        assert_eq!(VaeConfig::builtin("big"), None);
    }

    #[test]
    fn z_image_config_json_parses() {
        let json = r#"{"_class_name": "AutoencoderKL", "_diffusers_version": "0.36.0.dev0",
            "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
            "down_block_types": ["DownEncoderBlock2D", "DownEncoderBlock2D",
                "DownEncoderBlock2D", "DownEncoderBlock2D"],
            "force_upcast": true, "in_channels": 3, "latent_channels": 16,
            "latents_mean": null, "latents_std": null, "layers_per_block": 2,
            "mid_block_add_attention": true, "norm_num_groups": 32, "out_channels": 3,
            "sample_size": 1024, "scaling_factor": 0.3611, "shift_factor": 0.1159,
            "up_block_types": ["UpDecoderBlock2D", "UpDecoderBlock2D", "UpDecoderBlock2D",
                "UpDecoderBlock2D"],
            "use_post_quant_conv": false, "use_quant_conv": false}"#;
        let config: VaeConfig = serde_json::from_str(json).unwrap();
        config.validate().unwrap();
        assert_eq!(
            VaeConfig {
                class_name: None,
                ..config.clone()
            },
            VaeConfig::z_image()
        );
        let back: VaeConfig = serde_json::from_value(config.to_json()).unwrap();
        assert_eq!(back.class_name.as_deref(), Some("AutoencoderKL"));
        assert_eq!(
            VaeConfig {
                class_name: None,
                ..back
            },
            VaeConfig::z_image()
        );
    }

    #[test]
    fn defaults_are_diffusers_and_a_size_pair_reads_its_first_entry() {
        let config: VaeConfig = serde_json::from_str(r#"{"sample_size": [512, 512]}"#).unwrap();
        assert_eq!(config.sample_size, 512);
        assert_eq!(config.block_out_channels, vec![64]);
        assert!(config.use_quant_conv && config.shift_factor.is_none());
        config.validate().unwrap();
        assert!(serde_json::from_str::<VaeConfig>(r#"{"sample_size": []}"#).is_err());
    }

    #[test]
    fn bad_configs_are_refused_with_the_reason() {
        let cases: [(VaeConfig, &str); 7] = [
            (
                VaeConfig {
                    block_out_channels: vec![16, 36, 32, 32],
                    ..VaeConfig::tiny()
                },
                "block_out_channels[1] = 36 is not divisible by norm_num_groups 8",
            ),
            (
                VaeConfig {
                    block_out_channels: vec![],
                    down_block_types: vec![],
                    up_block_types: vec![],
                    ..VaeConfig::tiny()
                },
                "block_out_channels must not be empty",
            ),
            (
                VaeConfig {
                    down_block_types: vec![DOWN_BLOCK.into(); 3],
                    ..VaeConfig::tiny()
                },
                "down_block_types has 3 entries for 4 block_out_channels",
            ),
            (
                VaeConfig {
                    up_block_types: vec!["AttnUpDecoderBlock2D".into(); 4],
                    ..VaeConfig::tiny()
                },
                "AttnUpDecoderBlock2D is not supported",
            ),
            (
                VaeConfig {
                    act_fn: "gelu".into(),
                    ..VaeConfig::tiny()
                },
                "act_fn gelu is not supported",
            ),
            (
                VaeConfig {
                    scaling_factor: 0.0,
                    ..VaeConfig::tiny()
                },
                "scaling_factor",
            ),
            (
                VaeConfig {
                    class_name: Some("AutoencoderKLWan".into()),
                    ..VaeConfig::tiny()
                },
                "only AutoencoderKL",
            ),
        ];
        for (config, expected) in cases {
            let err = config.validate().expect_err(expected);
            assert!(err.contains(expected), "{err:?} lacks {expected:?}");
        }
    }
}
