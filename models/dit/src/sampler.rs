//! The denoising loop: seeded noise, flow-match Euler steps, classifier-free guidance as
//! one batch of two. The loop is an `mlx::steps` loop, so the runtime evaluates and keeps
//! exactly what each step carries (the latents) and nothing here frees or evaluates by hand.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use mlx::{random, Array, Dtype};

use crate::model::ZImage;
use crate::scheduler::{Schedule, SchedulerConfig};
use crate::sequence::{fit_captions, Sequence};
use crate::teacache::{Coefficients, Mode, Naive, Poly};
use crate::{DitError, Result};

/// Latent pixels per image pixel side: the VAE's downsampling factor.
pub const VAE_SCALE: i32 = 8;

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

/// TeaCache's settings (see [`crate::teacache`]).
#[derive(Clone, Debug)]
pub struct TeaCacheOptions {
    pub mode: Mode,
    pub threshold: f64,
    /// Steps at the start that always compute.
    pub warmup: usize,
    /// Naive mode's factor on timestep distances.
    pub rescale: f64,
    /// Poly mode's fitted polynomial.
    pub coefficients: Option<Coefficients>,
}

impl TeaCacheOptions {
    pub fn off() -> TeaCacheOptions {
        TeaCacheOptions {
            mode: Mode::Off,
            threshold: 0.0,
            warmup: 0,
            rescale: 1.0,
            coefficients: None,
        }
    }

    /// Poly mode at threshold 0, which computes every step (rescaled changes are never
    /// negative) while measuring what poly measures: the setting `dit teacache-fit`
    /// records changes with, before any polynomial exists.
    pub fn measure_only() -> TeaCacheOptions {
        TeaCacheOptions {
            mode: Mode::Poly,
            coefficients: Some(Coefficients::identity()),
            ..TeaCacheOptions::off()
        }
    }
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
    if request.steps == 0 {
        return Err(DitError::Input("--steps must be at least 1".into()));
    }
    let (h, w) = request.latent_hw()?;
    let config = &model.config;
    let guided = request.cfg != 0.0;
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

/// One step's transformer work, with TeaCache's cached arrays. Those are fields assigned
/// inside the step loop, so the loop carries them like the latents: nothing keeps or
/// frees them by hand.
struct Denoiser<'a> {
    model: &'a ZImage,
    cap_feats: Array,
    seq: Sequence,
    latent_hw: (i32, i32),
    /// Real image tokens: what TeaCache compares between steps.
    image_tokens: i32,
    cache: Cache,
    /// Whether each step so far ran the transformer (naive) or its main blocks (poly).
    computed: Vec<bool>,
    /// With `record_changes`: (modulated-input change, output change) per step pair.
    changes: Option<Vec<(f64, f64)>>,
    previous_output: Option<Array>,
}

enum Cache {
    Off,
    Naive {
        decisions: Naive,
        /// The last computed noise prediction (both branches of a guided batch).
        prediction: Option<Array>,
    },
    Poly {
        decisions: Poly,
        previous_input: Option<Array>,
        /// The main blocks' output minus input at the last computed step, per branch.
        residual: Option<Array>,
    },
}

impl<'a> Denoiser<'a> {
    fn new(
        model: &'a ZImage,
        request: &Request,
        schedule: &Schedule,
        cap_feats: Array,
        seq: Sequence,
        image_tokens: i32,
    ) -> Result<Denoiser<'a>> {
        let options = &request.teacache;
        let cache = match options.mode {
            Mode::Off => Cache::Off,
            Mode::Naive => Cache::Naive {
                decisions: Naive::new(options.threshold, options.rescale, options.warmup),
                prediction: None,
            },
            Mode::Poly => {
                let coefficients = options.coefficients.as_ref().ok_or_else(|| {
                    DitError::Input(
                        "--teacache poly needs fitted coefficients: --coefficients FILE \
                         (from `dit teacache-fit`), or a teacache_coefficients.json next to \
                         the model's config.json"
                            .into(),
                    )
                })?;
                if model.layers.is_empty() {
                    return Err(DitError::Input(
                        "--teacache poly needs a model with main layers".into(),
                    ));
                }
                Cache::Poly {
                    decisions: Poly::new(
                        options.threshold,
                        coefficients,
                        options.warmup,
                        schedule.len(),
                    ),
                    previous_input: None,
                    residual: None,
                }
            }
        };
        Ok(Denoiser {
            model,
            cap_feats,
            seq,
            latent_hw: request.latent_hw()?,
            image_tokens,
            cache,
            computed: Vec::with_capacity(schedule.len()),
            changes: request.record_changes.then(Vec::new),
            previous_output: None,
        })
    }

    /// The transformer's output for step `step` at the transformer's `t`, `[B, C, h, w]`
    /// float32: computed, or reused as TeaCache decides.
    fn velocity(&mut self, step: usize, t: f32, latents: &Array) -> Result<Array> {
        let model = self.model;
        let batch = latents.dim(0).unwrap_or(1);
        let t_array = Array::full(&[batch], t, Dtype::F32);
        let latents = latents.astype(model.dtype());
        let (h, w) = self.latent_hw;
        let (output, computed) = match &mut self.cache {
            Cache::Off => {
                let out = model.predict(&latents, &t_array, &self.cap_feats, &self.seq);
                (out, true)
            }
            Cache::Naive {
                decisions,
                prediction,
            } => match prediction {
                Some(cached) if !decisions.should_compute(step, f64::from(t)) => {
                    (cached.clone(), false)
                }
                _ => {
                    let out = model.predict(&latents, &t_array, &self.cap_feats, &self.seq);
                    decisions.computed(f64::from(t));
                    *prediction = Some(out.clone());
                    (out, true)
                }
            },
            Cache::Poly {
                decisions,
                previous_input,
                residual,
            } => {
                let embedded = model.embed(&latents, &t_array, &self.cap_feats, &self.seq);
                let input = model.layers[0]
                    .modulated_input(&embedded.tokens, Some(&embedded.adaln))
                    .slice_axis(1, 0, self.image_tokens);
                let change = match previous_input.as_ref() {
                    Some(previous) => relative_l1(&input, previous)?,
                    None => 0.0,
                };
                *previous_input = Some(input);
                let compute = decisions.should_compute(step, change) || residual.is_none();
                let tokens = match residual.as_ref() {
                    Some(cached) if !compute => &embedded.tokens + cached,
                    _ => {
                        let out = model.main_layers(&embedded.tokens, &embedded.adaln, &self.seq);
                        *residual = Some(&out - &embedded.tokens);
                        out
                    }
                };
                if let Some(changes) = &mut self.changes {
                    if step > 0 {
                        changes.push((change, f64::NAN));
                    }
                }
                let out = model.finish(&tokens, &embedded.adaln, h, w);
                (out, compute)
            }
        };
        let output = output.astype(Dtype::F32);
        if let Some(changes) = &mut self.changes {
            if let (Some(previous), Some(last)) = (&self.previous_output, changes.last_mut()) {
                last.1 = relative_l1(&output, previous)?;
            }
            self.previous_output = Some(output.clone());
        }
        self.computed.push(computed);
        Ok(output)
    }
}

/// `mean|a − b| / mean|b|`, read back to the host (TeaCache decides on the host).
fn relative_l1(a: &Array, b: &Array) -> Result<f64> {
    let diff = (a - b).abs().mean(mlx::ALL, false);
    let base = b.abs().mean(mlx::ALL, false);
    let value = (diff / base).astype(Dtype::F32).item::<f32>()?;
    Ok(f64::from(value))
}
