//! The denoising loop, as `ZImagePipeline.__call__` runs it: float32 latents, flow-match
//! Euler steps, classifier-free guidance as one batch of `[positive..., negative...]` with
//! diffusers' truncation and renormalization. The loop is an `mlx::steps` loop, so the
//! runtime evaluates and keeps exactly what each step carries (the latents, TeaCache's
//! cache) and nothing here frees or evaluates by hand.

use std::cell::{Cell, RefCell};
use std::ops::ControlFlow;
use std::rc::Rc;
use std::time::Duration;

use dit::denoiser::{Denoiser, DenoiserSetup};
use dit::sequence::fit_captions;
use dit::teacache::{Mode, TeaCacheOptions};
use dit::ZImage;
use mlx::{random, Array, Device, Dtype};

use crate::scheduler::{scale_noise, Schedule, SchedulerConfig};
use crate::{Error, Result};

/// Latent pixels per image pixel side: the VAE's downsampling factor.
pub const VAE_SCALE: i32 = 8;
/// Picture sides are multiples of this: the VAE's 8x times the transformer's 2x2 patches.
pub const SIDE_MULTIPLE: i32 = 2 * VAE_SCALE;
/// The largest width or height drawn: a million image tokens, far past what any model
/// was trained on, and small enough that token counts stay within `i32`.
pub const MAX_SIDE: i32 = 16384;

/// A picture side the sampler draws: a positive multiple of [`SIDE_MULTIPLE`] up to
/// [`MAX_SIDE`].
pub fn check_side(side: i32) -> Result<()> {
    if side <= 0 || side % SIDE_MULTIPLE != 0 || side > MAX_SIDE {
        return Err(Error::Input(format!(
            "width and height must be positive multiples of {SIDE_MULTIPLE}, at most \
             {MAX_SIDE}, found {side}"
        )));
    }
    Ok(())
}
/// Steps drawn when none are asked for: Z-Image-Turbo's 9 (as its model card samples).
pub const DEFAULT_STEPS: usize = 9;
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
    /// Seeded standard-normal features of `len` tokens (for transformer-only checkpoints,
    /// which have no text encoder).
    pub fn random(len: i32, dim: i32, seed: u64) -> Caption {
        Caption {
            feats: random::normal(&[1, len, dim], Dtype::F32, &random::key(seed)),
            len,
        }
    }

    /// A prompt embedding `[L, D]` as the transformer takes it.
    pub fn from_embeds(embeds: &Array) -> Caption {
        let [len, _] = embeds.dims();
        Caption {
            feats: embeds.expand_dims(0),
            len,
        }
    }
}

/// Classifier-free guidance, as the pipeline's `guidance_scale`, `cfg_truncation` and
/// `cfg_normalization` define it.
#[derive(Clone, Debug, PartialEq)]
pub struct Guidance {
    /// `pred = pos + scale · (pos − neg)`; 0 runs the positive caption alone.
    pub scale: f32,
    /// Steps whose normalized time `(1000 − t) / 1000` exceeds this run without guidance
    /// (only when at most 1; 1 never truncates).
    pub truncation: f32,
    /// When positive, each guided prediction's norm is capped at this multiple of the
    /// positive prediction's norm; 0 leaves it alone.
    pub normalization: f32,
}

impl Guidance {
    /// No guidance: what Z-Image-Turbo samples with.
    pub fn off() -> Guidance {
        Guidance {
            scale: 0.0,
            truncation: 1.0,
            normalization: 0.0,
        }
    }

    /// Whether guidance runs at all: a scale above 0, as the pipeline decides.
    pub fn enabled(&self) -> bool {
        self.scale > 0.0
    }

    /// Whether step `i` of `schedule` is guided.
    pub fn at_step(&self, schedule: &Schedule, i: usize) -> bool {
        let t_norm = (1000.0 - schedule.timesteps[i]) / 1000.0;
        self.enabled() && !(self.truncation <= 1.0 && t_norm > self.truncation)
    }

    fn check(&self) -> Result<()> {
        let valid = |v: f32| v.is_finite() && v >= 0.0;
        if !(valid(self.scale) && valid(self.normalization) && self.truncation.is_finite()) {
            return Err(Error::Input(format!(
                "guidance scale and normalization must be non-negative numbers and truncation \
                 a number, found {self:?}"
            )));
        }
        Ok(())
    }
}

/// Where the sampler starts.
#[derive(Clone)]
pub enum Noise {
    /// Seeded float32 N(0, 1) latents of one image.
    Seeded(u64),
    /// Given latents `[B, C, h, w]` (diffusers' `latents=`): a batch of `B` images.
    Given(Array),
}

/// What to sample.
#[derive(Clone)]
pub struct Request {
    pub width: i32,
    pub height: i32,
    pub steps: usize,
    pub noise: Noise,
    pub guidance: Guidance,
    pub caption: Caption,
    /// The unconditional caption for guidance.
    pub negative: Caption,
    pub scheduler: SchedulerConfig,
    pub teacache: TeaCacheOptions,
    /// Record what `dit teacache-fit` needs (see [`Generation::changes`]).
    pub record_changes: bool,
}

/// Where image to image and inpainting start: an encoded picture. The request's noise is
/// then what the picture is noised with ([`scale_noise`]), to the first noise level of the
/// schedule [`truncated`](Schedule::truncated) at `strength`.
#[derive(Clone)]
pub struct InitImage {
    /// The picture's latents as the transformer sees them, `(z − shift) · scaling`,
    /// float32 `[B, C, h, w]` like the noise.
    pub latents: Array,
    /// The share of the schedule that runs, in (0, 1]; 1 starts from pure noise.
    pub strength: f64,
    /// Inpainting: `[1 or B, 1, h, w]` at latent resolution, 1 where the picture is
    /// repainted and 0 where it is kept; after each step the kept region is reset to the
    /// picture noised to the next step's level (`ZImageInpaintPipeline`).
    pub mask: Option<Array>,
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
    /// `[B, C, height/8, width/8]`, float32.
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

    /// The highest peak memory of any step. The step loop resets MLX's peak statistic at
    /// each boundary, so a peak read around the whole run sees only what followed the
    /// last step: this is the run's.
    pub fn peak_bytes(&self) -> usize {
        self.steps.iter().map(|s| s.peak_bytes).max().unwrap_or(0)
    }
}

impl Request {
    /// Latent height and width: the given latents', or the image size's over
    /// [`VAE_SCALE`], which must then be a multiple of 16.
    pub fn latent_hw(&self) -> Result<(i32, i32)> {
        if let Noise::Given(latents) = &self.noise {
            return match latents.shape() {
                &[_, _, h, w] => Ok((h, w)),
                shape => Err(Error::Input(format!(
                    "initial latents must be [B, C, h, w], found {shape:?}"
                ))),
            };
        }
        check_side(self.width)?;
        check_side(self.height)?;
        Ok((self.height / VAE_SCALE, self.width / VAE_SCALE))
    }

    /// The starting latents, float32 `[B, C, h, w]`.
    fn initial_latents(&self, channels: i32) -> Result<Array> {
        match &self.noise {
            Noise::Seeded(seed) => {
                let (h, w) = self.latent_hw()?;
                Ok(random::normal(
                    &[1, channels, h, w],
                    Dtype::F32,
                    &random::key(*seed),
                ))
            }
            Noise::Given(latents) => {
                let shape = latents.shape();
                if shape.len() != 4 || shape[1] != channels || shape[0] < 1 {
                    return Err(Error::Input(format!(
                        "initial latents must be [B, {channels}, h, w], found {shape:?}"
                    )));
                }
                if !latents.dtype().is_float() {
                    return Err(Error::Input(format!(
                        "initial latents must be floating point, found {}",
                        latents.dtype()
                    )));
                }
                let [_, _, h, w] = latents.dims();
                if h % 2 != 0 || w % 2 != 0 {
                    return Err(Error::Input(format!(
                        "initial latents need an even height and width (2x2 patches), found \
                         {h}x{w}"
                    )));
                }
                Ok(latents.astype(Dtype::F32))
            }
        }
    }
}

/// The transformer and TeaCache for one batch of `captions` (one per item) over latents
/// of `latent_hw`: its sequence layout is fixed for the run.
fn denoiser<'a>(
    model: &'a ZImage,
    request: &Request,
    steps: usize,
    captions: &[&Caption],
    latent_hw: (i32, i32),
) -> Result<Denoiser<'a>> {
    let config = &model.config;
    let cap_lens: Vec<i32> = captions.iter().map(|c| c.len).collect();
    let longest = captions
        .iter()
        .map(|c| c.feats.dims::<3>()[1])
        .max()
        .unwrap_or(0);
    let fitted: Vec<Array> = captions
        .iter()
        .map(|c| fit_captions(&c.feats, longest, Dtype::F32))
        .collect();
    let cap_feats = mlx::concatenate(&fitted.iter().collect::<Vec<_>>(), 0);
    let (h, w) = latent_hw;
    let shape_of_batch = Array::zeros(
        &[captions.len() as i32, config.in_channels, h, w],
        Dtype::F32,
    );
    let layout = model.layout(&shape_of_batch, &cap_feats, &cap_lens)?;
    Ok(Denoiser::new(
        model,
        DenoiserSetup {
            teacache: &request.teacache,
            steps,
            cap_feats: fit_captions(&cap_feats, layout.cap_len, model.dtype()),
            seq: layout.sequence(config),
            latent_hw,
            image_tokens: layout.image_tokens(),
            record_changes: request.record_changes,
        },
    )?)
}

/// `pos + scale · (pos − neg)` per item, each capped at `normalization · |pos|` when
/// renormalizing (norms over the whole item, as `torch.linalg.vector_norm`).
fn guide(pos: &Array, neg: &Array, guidance: &Guidance) -> Array {
    let pred = pos + (pos - neg) * f64::from(guidance.scale);
    if guidance.normalization <= 0.0 {
        return pred;
    }
    let norm = |x: &Array| x.square().sum(&[1, 2, 3], true).sqrt();
    let (pos_norm, pred_norm) = (norm(pos), norm(&pred));
    let max_norm = pos_norm * f64::from(guidance.normalization);
    let factor = mlx::where_(&pred_norm.greater(&max_norm), &max_norm / &pred_norm, 1.0);
    pred * factor
}

/// Runs the sampler from noise to the end. `on_step` sees each step's report as its
/// boundary completes. From a picture, or to stop early: [`generate_until`].
pub fn generate(
    model: &ZImage,
    request: &Request,
    mut on_step: impl FnMut(usize, &StepReport) + 'static,
) -> Result<Generation> {
    generate_until(model, request, None, move |i, report| {
        on_step(i, report);
        ControlFlow::Continue(())
    })
}

/// Image to image's strength must be in (0, 1]: the share of the schedule that runs.
pub fn check_strength(strength: f64) -> Result<()> {
    if !(strength > 0.0 && strength <= 1.0) {
        return Err(Error::Input(format!(
            "the strength must be in (0, 1], found {strength}"
        )));
    }
    Ok(())
}

/// The schedule and starting latents of a picture: its latents noised with `noise` to the
/// first level of the schedule truncated at the strength.
fn start_from(init: &InitImage, noise: &Array, schedule: &Schedule) -> Result<(Schedule, Array)> {
    let strength = init.strength;
    check_strength(strength)?;
    if init.latents.shape() != noise.shape() {
        return Err(Error::Input(format!(
            "the picture's latents (InitImage::latents) are {:?} but the noise latents are \
             {:?}: they must be the same shape",
            init.latents.shape(),
            noise.shape()
        )));
    }
    if let Some(mask) = &init.mask {
        // The noise is [B, C, h, w] (checked by `initial_latents`); the mask may be anything.
        let [batch, _, h, w] = noise.dims();
        let fits = match mask.shape() {
            &[b, 1, mh, mw] => (mh, mw) == (h, w) && (b == 1 || b == batch),
            _ => false,
        };
        if !fits {
            return Err(Error::Input(format!(
                "the inpainting mask (InitImage::mask) must be [1, 1, {h}, {w}] at latent \
                 resolution, found {:?}",
                mask.shape()
            )));
        }
    }
    let schedule = schedule.truncated(strength).ok_or_else(|| {
        Error::Input(format!(
            "strength {strength} leaves none of the {} steps to run",
            schedule.len()
        ))
    })?;
    let latents = scale_noise(&init.latents.astype(Dtype::F32), noise, schedule.sigmas[0]);
    Ok((schedule, latents))
}

/// Runs the sampler, from noise or from a picture, until `on_step`, which sees each
/// step's report as its boundary completes, breaks: the run then ends there with
/// [`Error::Cancelled`] (what a server does for a client that went away), its arrays
/// dropped.
pub fn generate_until(
    model: &ZImage,
    request: &Request,
    init: Option<&InitImage>,
    mut on_step: impl FnMut(usize, &StepReport) -> ControlFlow<()> + 'static,
) -> Result<Generation> {
    if request.steps == 0 || request.steps > MAX_STEPS {
        return Err(Error::Input(format!(
            "the step count must be between 1 and {MAX_STEPS}, found {}",
            request.steps
        )));
    }
    let guidance = &request.guidance;
    guidance.check()?;
    let config = &model.config;
    let noise = request.initial_latents(config.in_channels)?;
    let [batch, _, h, w] = noise.dims();
    let latent_hw = (h, w);
    let schedule = request
        .scheduler
        .schedule(request.steps, ((h / 2) * (w / 2)) as u32);
    let (schedule, mut latents) = match init {
        Some(init) => start_from(init, &noise, &schedule)?,
        None => (schedule, noise.clone()),
    };
    // Inpainting: the mask, and the picture's latents it keeps.
    let inpaint = init.and_then(|init| {
        let mask = init.mask.as_ref()?.astype(Dtype::F32);
        Some((mask, init.latents.astype(Dtype::F32)))
    });
    let guided_steps: Vec<bool> = (0..schedule.len())
        .map(|i| guidance.at_step(&schedule, i))
        .collect();
    let mixed = guided_steps.iter().any(|&g| g) && guided_steps.iter().any(|&g| !g);
    if mixed && request.teacache.mode != Mode::Off {
        return Err(Error::Input(
            "TeaCache cannot be combined with guidance truncation: its cache would mix \
             guided and unguided predictions"
                .into(),
        ));
    }

    // The batches the transformer sees: [positive × B] and, for guided steps,
    // [positive × B, negative × B].
    let positives = vec![&request.caption; batch as usize];
    let mut both = positives.clone();
    both.extend(vec![&request.negative; batch as usize]);
    // Built before the loop, so their arrays are not mistaken for carried state.
    let build =
        |captions: &[&Caption]| denoiser(model, request, schedule.len(), captions, latent_hw);
    let mut plain = guided_steps
        .contains(&false)
        .then(|| build(&positives))
        .transpose()?;
    let mut guided = guided_steps
        .contains(&true)
        .then(|| build(&both))
        .transpose()?;

    let reports = Rc::new(RefCell::new(Vec::with_capacity(request.steps)));
    let sink = Rc::clone(&reports);
    let stopped = Rc::new(Cell::new(false));
    let stop = Rc::clone(&stopped);
    // On a GPU the next step's graph is built while this one computes: the host's share
    // of a step (replaying the compiled graph) would otherwise leave the GPU idle at each
    // boundary. On the CPU that work competes with the computation, and each report's
    // memory figures stay those of a finished step with nothing queued.
    let steps = mlx::steps(0..schedule.len());
    let steps = match mlx::default_device() {
        Ok(Device::Gpu(_)) => steps.pipelined(),
        _ => steps,
    };
    let steps = steps.on_boundary(move |s| {
        let report = StepReport {
            elapsed: s.elapsed,
            active_bytes: s.active_bytes,
            peak_bytes: s.peak_bytes,
        };
        if on_step(s.step, &report).is_break() {
            stop.set(true);
        }
        sink.borrow_mut().push(report);
    });
    let mut computed = Vec::with_capacity(schedule.len());
    for i in steps {
        if stopped.get() {
            return Err(Error::Cancelled);
        }
        let t = schedule.model_t(i);
        let branch = if guided_steps[i] {
            &mut guided
        } else {
            &mut plain
        };
        // Each branch exists when some step takes it (built above).
        let denoiser = branch.as_mut().expect("a denoiser for every kind of step");
        let prediction = if guided_steps[i] {
            let input = mlx::concatenate(&[&latents, &latents], 0);
            let velocity = denoiser.velocity(i, t, &input)?;
            let (pos, neg) = (
                velocity.slice_axis(0, 0, batch),
                velocity.slice_axis(0, batch, 2 * batch),
            );
            guide(&pos, &neg, guidance)
        } else {
            denoiser.velocity(i, t, &latents)?
        };
        computed.push(denoiser.computed.last().copied().unwrap_or(true));
        // The transformer predicts the negated flow velocity.
        latents = &latents - prediction * f64::from(schedule.dt(i));
        if let Some((mask, picture)) = &inpaint {
            let kept = if i + 1 < schedule.len() {
                scale_noise(picture, &noise, schedule.sigmas[i + 1])
            } else {
                picture.clone()
            };
            latents = (1.0 - mask) * kept + mask * &latents;
        }
    }
    if stopped.get() {
        return Err(Error::Cancelled);
    }
    // A picture decoded from these would be black or noise, with no word of why.
    if !latents.all_finite()? {
        return Err(Error::NonFinite {
            what: format!("the latents after {} steps", schedule.len()),
            dtype: model.dtype(),
        });
    }
    let changes = guided.or(plain).and_then(|denoiser| denoiser.changes);
    Ok(Generation {
        latents,
        schedule,
        steps: reports.take(),
        computed,
        changes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pictures_are_checked_before_their_shapes_are_read() {
        let schedule = SchedulerConfig::default().schedule(4, 16);
        let noise = Array::zeros(&[1, 16, 4, 4], Dtype::F32);
        let init = |mask: Option<Array>, strength| InitImage {
            latents: Array::zeros(&[1, 16, 4, 4], Dtype::F32),
            strength,
            mask,
        };
        let input_error = |init: &InitImage| match start_from(init, &noise, &schedule) {
            Err(Error::Input(message)) => message,
            Err(e) => panic!("not an input error: {e}"),
            Ok(_) => panic!("accepted"),
        };
        // A mask that is not 4-D is an error, not a panic.
        let flat = Some(Array::zeros(&[4, 4], Dtype::F32));
        assert!(input_error(&init(flat, 0.5)).contains("InitImage::mask"));
        let wide = Some(Array::zeros(&[1, 1, 4, 8], Dtype::F32));
        assert!(input_error(&init(wide, 0.5)).contains("[1, 1, 4, 4]"));
        assert!(input_error(&init(None, 1.5)).contains("(0, 1]"));
        let other = InitImage {
            latents: Array::zeros(&[1, 16, 2, 2], Dtype::F32),
            ..init(None, 0.5)
        };
        assert!(input_error(&other).contains("InitImage::latents"));
        let (kept, _) = start_from(
            &init(Some(Array::ones(&[1, 1, 4, 4], Dtype::F32)), 0.5),
            &noise,
            &schedule,
        )
        .unwrap();
        assert_eq!(kept.len(), 2);
    }

    #[test]
    fn given_latents_of_the_wrong_rank_are_an_error() {
        let request = Request {
            width: 64,
            height: 64,
            steps: 1,
            noise: Noise::Given(Array::zeros(&[16, 8, 8], Dtype::F32)),
            guidance: Guidance::off(),
            caption: Caption::random(4, 8, 0),
            negative: Caption::random(4, 8, 1),
            scheduler: SchedulerConfig::default(),
            teacache: TeaCacheOptions::off(),
            record_changes: false,
        };
        assert!(matches!(request.latent_hw(), Err(Error::Input(_))));
    }
}
