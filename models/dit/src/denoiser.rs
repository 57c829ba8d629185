//! One sampling step's transformer work: a full forward pass, or what TeaCache lets the
//! step skip. The cached arrays are fields assigned inside the sampler's step loop, so the
//! loop carries them like the latents: nothing keeps or frees them by hand.

use mlx::{Array, Dtype};

use crate::model::ZImage;
use crate::sequence::Sequence;
use crate::teacache::{Mode, Naive, Poly, TeaCacheOptions};
use crate::{DitError, Result};

/// What a [`Denoiser`] is set up for: one sampling run's fixed inputs.
pub struct DenoiserSetup<'r> {
    pub teacache: &'r TeaCacheOptions,
    /// Steps the run takes (poly mode always computes the last one).
    pub steps: usize,
    /// Caption features `[B, L, cap_feat_dim]` in the model's dtype, fitted to the layout.
    pub cap_feats: Array,
    pub seq: Sequence,
    /// Latent height and width.
    pub latent_hw: (i32, i32),
    /// Real image tokens: what TeaCache compares between steps.
    pub image_tokens: i32,
    /// Record what fitting TeaCache's polynomial needs (see [`Denoiser::changes`]).
    pub record_changes: bool,
}

/// The transformer and TeaCache's state for one sampling run.
pub struct Denoiser<'a> {
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
    pub fn new(model: &'a ZImage, setup: DenoiserSetup<'_>) -> Result<Denoiser<'a>> {
        let options = setup.teacache;
        let cache = match options.mode {
            Mode::Off => Cache::Off,
            Mode::Naive => Cache::Naive {
                decisions: Naive::new(options.threshold, options.rescale, options.warmup),
                prediction: None,
            },
            Mode::Poly => {
                let coefficients = options.coefficients.as_ref().ok_or_else(|| {
                    DitError::Input(
                        "TeaCache's poly mode needs fitted coefficients, and the model has no \
                         teacache_coefficients.json next to its config.json"
                            .into(),
                    )
                })?;
                if model.layers.is_empty() {
                    return Err(DitError::Input(
                        "TeaCache's poly mode needs a model with main layers".into(),
                    ));
                }
                Cache::Poly {
                    decisions: Poly::new(
                        options.threshold,
                        coefficients,
                        options.warmup,
                        setup.steps,
                    ),
                    previous_input: None,
                    residual: None,
                }
            }
        };
        Ok(Denoiser {
            model,
            cap_feats: setup.cap_feats,
            seq: setup.seq,
            latent_hw: setup.latent_hw,
            image_tokens: setup.image_tokens,
            cache,
            computed: Vec::with_capacity(setup.steps),
            changes: setup.record_changes.then(Vec::new),
            previous_output: None,
        })
    }

    /// The transformer's output for step `step` at the transformer's `t`, `[B, C, h, w]`
    /// float32: computed, or reused as TeaCache decides.
    pub fn velocity(&mut self, step: usize, t: f32, latents: &Array) -> Result<Array> {
        let model = self.model;
        let [batch, ..] = latents.dims::<4>();
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
