//! The denoising loop: seeded noise, flow-match Euler steps, classifier-free guidance as
//! one batch of two. The loop is an `mlx::steps` loop, so the runtime evaluates and keeps
//! exactly what each step carries (the latents) and nothing here frees or evaluates by hand.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use mlx::{random, Array, Dtype};

use crate::denoiser::Denoiser;
use crate::model::ZImage;
use crate::scheduler::{Schedule, SchedulerConfig};
use crate::sequence::fit_captions;
use crate::teacache::TeaCacheOptions;
use crate::{DitError, Result};

/// Latent pixels per image pixel side: the VAE's downsampling factor.
pub const VAE_SCALE: i32 = 8;
/// More steps than any schedule uses; a bound so a mistyped count is an error, not an
/// allocation failure.
pub const MAX_STEPS: usize = 10_000;

/// Caption features for one image: `[1, L, cap_feat_dim]`, the first `len` tokens real.
#[derive(Clone)]
pub struct Caption {
    pub feats: Array,
    pub len: i32,
}

impl Caption {
    /// Seeded standard-normal features of `len` tokens (what `dit generate` uses without
    /// `--cap-feats`).
    pub fn random(len: i32, dim: i32, seed: u64) -> Caption {
        Caption {
            feats: random::normal(&[1, len, dim], Dtype::F32, &random::key(seed)),
            len,
        }
    }
}

/// What to sample.
#[derive(Clone)]
pub struct Request {
    pub width: i32,
    pub height: i32,
    pub steps: usize,
    pub seed: u64,
    /// Guidance scale; 0 runs the positive caption alone.
    pub cfg: f32,
    pub caption: Caption,
    /// The unconditional caption for guidance.
    pub negative: Caption,
    pub scheduler: SchedulerConfig,
    pub teacache: TeaCacheOptions,
    /// Record what `dit teacache-fit` needs (see [`Generation::changes`]).
    pub record_changes: bool,
}

/// What one step cost.
#[derive(Clone, Debug, Default)]
pub struct StepReport {
    pub elapsed: Duration,
    /// Active memory after the step's boundary evaluation.
    pub active_bytes: usize,
    /// Peak memory during the step.
    pub peak_bytes: usize,
}

/// A finished run.
pub struct Generation {
    /// `[1, C, height/8, width/8]`, float32.
    pub latents: Array,
    pub schedule: Schedule,
    pub steps: Vec<StepReport>,
    /// Whether each step ran the transformer (with `poly`: its main blocks) or reused
    /// TeaCache's cache.
    pub computed: Vec<bool>,
    /// With [`Request::record_changes`] and `poly`: (relative L1 change of the first main
    /// block's modulated input, relative L1 change of the output) for each step after the
    /// first: what `dit teacache-fit` fits.
    pub changes: Option<Vec<(f64, f64)>>,
}

impl Generation {
    /// Transformer passes run (main-block passes with `poly`; a guided batch counts once).
    pub fn forward_passes(&self) -> usize {
        self.computed.iter().filter(|&&c| c).count()
    }

    /// Steps that reused TeaCache's cache instead.
    pub fn cache_hits(&self) -> usize {
        self.computed.len() - self.forward_passes()
    }
}

impl Request {
    /// Whether guidance runs: a scale above 0, as the pipeline decides.
    pub fn guided(&self) -> bool {
        self.cfg > 0.0
    }

    /// Latent height and width.
    pub fn latent_hw(&self) -> Result<(i32, i32)> {
        let multiple = VAE_SCALE * 2;
        if self.width <= 0
            || self.height <= 0
            || self.width % multiple != 0
            || self.height % multiple != 0
        {
            return Err(DitError::Input(format!(
                "width and height must be positive multiples of {multiple}, found {}x{}",
                self.width, self.height
            )));
        }
        Ok((self.height / VAE_SCALE, self.width / VAE_SCALE))
    }
}

/// Runs the sampler. `on_step` sees each step's report as its boundary completes.
pub fn generate(
    model: &ZImage,
    request: &Request,
    mut on_step: impl FnMut(usize, &StepReport) + 'static,
) -> Result<Generation> {
    if request.steps == 0 || request.steps > MAX_STEPS {
        return Err(DitError::Input(format!(
            "--steps must be between 1 and {MAX_STEPS}, found {}",
            request.steps
        )));
    }
    if !(request.cfg.is_finite() && request.cfg >= 0.0) {
        return Err(DitError::Input(format!(
            "--cfg must be a non-negative number, found {}",
            request.cfg
        )));
    }
    let (h, w) = request.latent_hw()?;
    let config = &model.config;
    let guided = request.guided();
    let noise_shape = [1, config.in_channels, h, w];
    let mut latents = random::normal(&noise_shape, Dtype::F32, &random::key(request.seed));

    // The batch the transformer sees: [positive] or [positive, negative].
    let captions: Vec<&Caption> = if guided {
        vec![&request.caption, &request.negative]
    } else {
        vec![&request.caption]
    };
    let cap_lens: Vec<i32> = captions.iter().map(|c| c.len).collect();
    let longest = captions
        .iter()
        .map(|c| c.feats.dim(1).unwrap_or(0))
        .max()
        .unwrap_or(0);
    let fitted: Vec<Array> = captions
        .iter()
        .map(|c| fit_captions(&c.feats, longest, Dtype::F32))
        .collect();
    let cap_feats = mlx::concatenate(&fitted.iter().collect::<Vec<_>>(), 0);
    let batch_latents = Array::zeros(
        &[captions.len() as i32, config.in_channels, h, w],
        Dtype::F32,
    );
    let layout = model.layout(&batch_latents, &cap_feats, &cap_lens)?;
    let seq = layout.sequence(config);
    let cap_feats = fit_captions(&cap_feats, layout.cap_len, model.dtype());

    let image_tokens = layout.image_tokens();
    let schedule = request
        .scheduler
        .schedule(request.steps, image_tokens as u32);
    let mut denoiser = Denoiser::new(model, request, &schedule, cap_feats, seq, image_tokens)?;
    let reports = Rc::new(RefCell::new(Vec::with_capacity(request.steps)));
    let sink = Rc::clone(&reports);
    let steps = mlx::steps(0..schedule.len()).on_boundary(move |s| {
        let report = StepReport {
            elapsed: s.elapsed,
            active_bytes: s.active_bytes,
            peak_bytes: s.peak_bytes,
        };
        on_step(s.step, &report);
        sink.borrow_mut().push(report);
    });
    for i in steps {
        let input = if guided {
            mlx::concatenate(&[&latents, &latents], 0)
        } else {
            latents.clone()
        };
        let velocity = denoiser.velocity(i, schedule.model_t(i), &input)?;
        let prediction = if guided {
            let (pos, neg) = (velocity.slice_axis(0, 0, 1), velocity.slice_axis(0, 1, 2));
            &pos + (&pos - &neg) * f64::from(request.cfg)
        } else {
            velocity
        };
        // The transformer predicts the negated flow velocity.
        latents = &latents - prediction * f64::from(schedule.dt(i));
    }
    latents.check()?;
    Ok(Generation {
        latents,
        schedule,
        steps: reports.take(),
        computed: denoiser.computed,
        changes: denoiser.changes,
    })
}
