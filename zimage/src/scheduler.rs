//! Flow-match Euler, as diffusers' `FlowMatchEulerDiscreteScheduler` runs it for
//! `ZImagePipeline`: sigmas `linspace(1, 1/n, n)`, shifted by `mu` computed from the image
//! token count (or by a fixed shift when dynamic shifting is off), a final sigma of 0, and
//! `x ← x + (σ_next − σ)·v`. Arithmetic is float32 where diffusers' is, so timesteps and
//! sigmas match it bit for bit or within an ulp.

use std::path::Path;

use mlx::Array;
use serde::Deserialize;

use crate::{Error, Result};

/// The scheduler's `scheduler_config.json` keys this sampler uses. Keys a file leaves out
/// take diffusers' defaults for the class (no dynamic shifting, shift 1).
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default = "SchedulerConfig::diffusers_defaults")]
pub struct SchedulerConfig {
    pub num_train_timesteps: u32,
    pub shift: f32,
    pub use_dynamic_shifting: bool,
    pub base_shift: f64,
    pub max_shift: f64,
    pub base_image_seq_len: u32,
    pub max_image_seq_len: u32,
}

impl Default for SchedulerConfig {
    /// Z-Image-Turbo's published scheduler: a static shift of 3, no dynamic shifting (the
    /// `calculate_shift` settings are the pipeline's defaults, unused then).
    fn default() -> SchedulerConfig {
        SchedulerConfig {
            num_train_timesteps: 1000,
            shift: 3.0,
            use_dynamic_shifting: false,
            base_shift: 0.5,
            max_shift: 1.15,
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
        }
    }
}

/// Keys of diffusers' scheduler that change the schedule in ways this sampler does not
/// implement, with the value that leaves it unchanged.
const UNSUPPORTED: [(&str, serde_json::Value); 7] = [
    ("time_shift_type", serde_json::Value::Null),
    ("shift_terminal", serde_json::Value::Null),
    ("use_karras_sigmas", serde_json::Value::Bool(false)),
    ("use_exponential_sigmas", serde_json::Value::Bool(false)),
    ("use_beta_sigmas", serde_json::Value::Bool(false)),
    ("invert_sigmas", serde_json::Value::Bool(false)),
    ("stochastic_sampling", serde_json::Value::Bool(false)),
];

impl SchedulerConfig {
    /// `FlowMatchEulerDiscreteScheduler.__init__`'s defaults.
    fn diffusers_defaults() -> SchedulerConfig {
        SchedulerConfig {
            shift: 1.0,
            ..SchedulerConfig::default()
        }
    }

    /// Parses a `scheduler_config.json`, refusing settings it would silently ignore.
    pub fn parse(text: &str) -> std::result::Result<SchedulerConfig, String> {
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| e.to_string())?;
        for (key, neutral) in &UNSUPPORTED {
            let set = value.get(key).filter(|v| !v.is_null());
            let neutral = match (key, set) {
                (&"time_shift_type", Some(v)) => v == "exponential",
                (_, Some(v)) => v == neutral || v == &serde_json::json!(0.0),
                (_, None) => true,
            };
            if !neutral {
                return Err(format!("`{key}` is not supported by this sampler"));
            }
        }
        let config: SchedulerConfig = serde_json::from_value(value).map_err(|e| e.to_string())?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        if self.num_train_timesteps == 0 {
            return Err("`num_train_timesteps` must be positive".into());
        }
        if !(self.shift.is_finite() && self.shift > 0.0) {
            return Err(format!("`shift` must be positive, found {}", self.shift));
        }
        if self.use_dynamic_shifting
            && (self.max_image_seq_len <= self.base_image_seq_len
                || !self.base_shift.is_finite()
                || !self.max_shift.is_finite())
        {
            return Err(
                "dynamic shifting needs max_image_seq_len > base_image_seq_len and finite shifts"
                    .into(),
            );
        }
        Ok(())
    }

    /// The scheduler config shipped with a checkpoint: `scheduler_config.json` in the
    /// transformer's directory or in `../scheduler/` (a whole pipeline's layout); the
    /// default when there is none.
    pub fn for_model_dir(dir: &Path) -> Result<SchedulerConfig> {
        let candidates = [
            dir.join("scheduler_config.json"),
            dir.join("../scheduler/scheduler_config.json"),
        ];
        let Some(path) = candidates.iter().find(|p| p.is_file()) else {
            return Ok(SchedulerConfig::default());
        };
        let text = crate::read_text(path)?;
        SchedulerConfig::parse(&text).map_err(|message| Error::Config {
            path: path.clone(),
            message,
        })
    }

    /// The config as diffusers writes `scheduler_config.json`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "_class_name": "FlowMatchEulerDiscreteScheduler",
            "_diffusers_version": "0.42.1",
            "num_train_timesteps": self.num_train_timesteps,
            "shift": self.shift,
            "use_dynamic_shifting": self.use_dynamic_shifting,
            "base_shift": self.base_shift,
            "max_shift": self.max_shift,
            "base_image_seq_len": self.base_image_seq_len,
            "max_image_seq_len": self.max_image_seq_len,
        })
    }

    /// `calculate_shift` of the pipeline: `mu` linear in the image token count.
    pub fn mu(&self, image_seq_len: u32) -> f64 {
        let (base, max) = (
            f64::from(self.base_image_seq_len),
            f64::from(self.max_image_seq_len),
        );
        let m = (self.max_shift - self.base_shift) / (max - base);
        let b = self.base_shift - m * base;
        f64::from(image_seq_len) * m + b
    }

    /// The schedule of `steps` steps for images of `image_seq_len` tokens.
    pub fn schedule(&self, steps: usize, image_seq_len: u32) -> Schedule {
        let base = linspace_f32(1.0, 1.0 / steps as f32, steps);
        let shifted: Vec<f32> = if self.use_dynamic_shifting {
            let e = self.mu(image_seq_len).exp() as f32;
            base.iter().map(|&s| e / (e + (1.0 / s - 1.0))).collect()
        } else {
            let shift = self.shift;
            base.iter()
                .map(|&s| shift * s / (1.0 + (shift - 1.0) * s))
                .collect()
        };
        let train = self.num_train_timesteps as f32;
        let timesteps = shifted.iter().map(|&s| s * train).collect();
        let mut sigmas = shifted;
        sigmas.push(0.0);
        Schedule { timesteps, sigmas }
    }
}

/// Timesteps (`σ·1000`) and sigmas (one more, ending at 0) of a sampling run.
#[derive(Clone, Debug, PartialEq)]
pub struct Schedule {
    pub timesteps: Vec<f32>,
    pub sigmas: Vec<f32>,
}

impl Schedule {
    pub fn len(&self) -> usize {
        self.timesteps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.timesteps.is_empty()
    }

    /// The transformer's `t` at step `i`, as the pipeline computes it: `(1000 − t) / 1000`.
    pub fn model_t(&self, i: usize) -> f32 {
        (1000.0 - self.timesteps[i]) / 1000.0
    }

    /// `σ_{i+1} − σ_i`, the Euler step's multiplier of the velocity.
    pub fn dt(&self, i: usize) -> f32 {
        self.sigmas[i + 1] - self.sigmas[i]
    }

    /// The steps image to image runs at `strength` (in (0, 1]): the last
    /// `min(n·strength, n)` of the `n`, rounded as diffusers' `get_timesteps` rounds them
    /// (it skips `int(n − n·strength)`); `None` when that leaves no step.
    pub fn truncated(&self, strength: f64) -> Option<Schedule> {
        let start = self.len() - steps_at_strength(self.len(), strength);
        (start < self.len()).then(|| Schedule {
            timesteps: self.timesteps[start..].to_vec(),
            sigmas: self.sigmas[start..].to_vec(),
        })
    }
}

/// How many of `steps` steps image to image runs at `strength`: what
/// [`Schedule::truncated`] keeps (0 when it keeps none).
pub fn steps_at_strength(steps: usize, strength: f64) -> usize {
    let n = steps as f64;
    let skipped = (n - (n * strength).min(n)).max(0.0) as usize;
    steps.saturating_sub(skipped)
}

/// The flow-matching forward process at noise level `sigma`: `σ·noise + (1 − σ)·sample`
/// (the scheduler's `scale_noise`), in float32.
pub fn scale_noise(sample: &Array, noise: &Array, sigma: f32) -> Array {
    noise * f64::from(sigma) + sample * f64::from(1.0 - sigma)
}

/// `torch.linspace` in float32: the first half counts up from `start`, the second half
/// down from `end`, so both ends are exact.
fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    let half = n / 2;
    (0..n)
        .map(|i| {
            if i < half {
                start + step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_ends_exactly() {
        let v = linspace_f32(1.0, 0.125, 8);
        assert_eq!((v[0], v[7]), (1.0, 0.125));
        assert!(v.windows(2).all(|w| w[0] > w[1]));
    }

    #[test]
    fn files_take_diffusers_defaults_and_unsupported_settings_are_refused() {
        let config = SchedulerConfig::parse(r#"{"shift": 3.0}"#).unwrap();
        assert!(!config.use_dynamic_shifting);
        // Static shift 3 over linspace(1, 1/4, 4): 1, 0.9, 0.75, 0.5.
        let t = config.schedule(4, 1024).timesteps;
        assert_eq!(t, [1000.0, 900.0, 750.0, 500.0]);
        let neutral = r#"{"use_karras_sigmas": false, "time_shift_type": "exponential",
            "shift_terminal": null, "_class_name": "FlowMatchEulerDiscreteScheduler"}"#;
        SchedulerConfig::parse(neutral).unwrap();
        for bad in [
            r#"{"use_karras_sigmas": true}"#,
            r#"{"time_shift_type": "linear"}"#,
            r#"{"shift_terminal": 0.02}"#,
            r#"{"shift": 0}"#,
            r#"{"use_dynamic_shifting": true, "base_image_seq_len": 256, "max_image_seq_len": 256}"#,
        ] {
            assert!(SchedulerConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn strength_keeps_the_last_steps_as_diffusers_rounds_them() {
        let s = SchedulerConfig::default().schedule(4, 1024);
        let kept = |strength| s.truncated(strength).map(|t| t.timesteps);
        assert_eq!(kept(1.0), Some(vec![1000.0, 900.0, 750.0, 500.0]));
        // 4 − 4·0.7 = 1.2 steps skipped: int() drops the fraction.
        assert_eq!(kept(0.7), Some(vec![900.0, 750.0, 500.0]));
        assert_eq!(kept(0.5), Some(vec![750.0, 500.0]));
        assert_eq!(kept(0.1), Some(vec![500.0]));
        // Too small to move 4 − 4·s off 4 in float64.
        assert_eq!(kept(1e-17), None);
        let t = s.truncated(0.5).unwrap();
        assert_eq!(t.sigmas, [0.75, 0.5, 0.0]);
        // What a progress bar counts.
        assert_eq!(steps_at_strength(4, 0.7), 3);
        assert_eq!(steps_at_strength(4, 1e-17), 0);
    }

    #[test]
    fn schedule_starts_at_one_and_ends_at_zero() {
        let s = SchedulerConfig::default().schedule(8, 1024);
        assert_eq!(s.len(), 8);
        assert_eq!(s.sigmas.len(), 9);
        assert_eq!((s.sigmas[0], s.sigmas[8]), (1.0, 0.0));
        assert_eq!(s.model_t(0), 0.0);
    }
}
