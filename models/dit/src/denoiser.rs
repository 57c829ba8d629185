//! One sampling step's transformer work: a full forward pass, or what TeaCache lets the
//! step skip. The cached arrays are fields assigned inside the sampler's step loop, so the
//! loop carries them like the latents: nothing keeps or frees them by hand.

use mlx::{Array, Dtype};

use crate::model::ZImage;
use crate::sampler::Request;
use crate::scheduler::Schedule;
use crate::sequence::Sequence;
use crate::teacache::{Mode, Naive, Poly};
use crate::{DitError, Result};

/// The transformer and TeaCache's state for one sampling run.
pub(crate) struct Denoiser<'a> {
    model: &'a ZImage,
    cap_feats: Array,
    seq: Sequence,
    latent_hw: (i32, i32),
    /// Real image tokens: what TeaCache compares between steps.
    image_tokens: i32,
    cache: Cache,
    /// Whether each step so far ran the transformer (naive) or its main blocks (poly).
    pub computed: Vec<bool>,
    /// With `record_changes`: (modulated-input change, output change) per step pair.
    pub changes: Option<Vec<(f64, f64)>>,
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
    pub fn new(
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
    pub fn velocity(&mut self, step: usize, t: f32, latents: &Array) -> Result<Array> {
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
