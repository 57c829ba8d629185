//! The one thread that owns the pipeline. MLX evaluation is serialized process-wide and a
//! step loop's frames belong to the thread that opened them, so every model call happens
//! here; HTTP handlers hand over [`Job`]s through a bounded queue and hear back through
//! each job's own channel.

use std::ops::ControlFlow;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use dit::teacache::TeaCacheOptions;
use dit::weights::ModelSource;
use mlx::memory;
use tokio::sync::mpsc;
use vae::Tiling;
use zimage::picture::{self, Parameters};
use zimage::pipeline::{LoadOptions, Pipeline};
use zimage::prompt::MAX_SEQUENCE_LENGTH;
use zimage::sampler::{self, Caption, Guidance, Noise, Request};

use super::error::ApiError;
use zimage::api::Generation;

/// What a handler hears about its job.
#[derive(Debug)]
pub enum Event {
    /// The worker took the job after it waited this long in the queue.
    Started {
        waited: Duration,
    },
    /// Denoising step `step` of `total` (over all of the request's pictures) is done.
    Progress {
        step: usize,
        total: usize,
    },
    Done(Result<Images, ApiError>),
}

/// A finished request: PNG files and the seed each was drawn from.
#[derive(Debug)]
pub struct Images {
    pub created: u64,
    pub pictures: Vec<(Vec<u8>, u64)>,
}

/// One request for the worker.
pub struct Job {
    pub id: u64,
    pub generation: Generation,
    /// Set when the client went away: the worker stops at the next step boundary.
    pub cancel: Arc<AtomicBool>,
    pub events: mpsc::UnboundedSender<Event>,
    pub enqueued: Instant,
}

impl Job {
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed) || self.events.is_closed()
    }
}

/// Counters the health endpoint reports, written by the worker.
#[derive(Debug, Default)]
pub struct Stats {
    pub running: AtomicBool,
    pub completed: AtomicU64,
    pub cancelled: AtomicU64,
    pub failed: AtomicU64,
    /// MLX's active memory once the model was loaded, and after the latest job.
    pub baseline_bytes: AtomicUsize,
    pub active_bytes: AtomicUsize,
    /// The highest peak of any job's steps and decoding.
    pub peak_bytes: Arc<AtomicUsize>,
}

/// What the loaded model is, for the models endpoints.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub id: String,
    /// When it was loaded, in Unix seconds.
    pub created: u64,
    /// What `dit info --json` reports.
    pub report: serde_json::Value,
    pub default_size: i32,
}

/// The worker thread; it ends when every sender of its queue is gone.
pub struct Worker {
    thread: JoinHandle<()>,
}

impl Worker {
    /// Loads the pipeline on a new thread and returns once it is ready to take jobs from
    /// `queue`, or with the loading error.
    pub fn start(
        source: ModelSource,
        options: LoadOptions,
        queue: mpsc::Receiver<Job>,
        stats: Arc<Stats>,
        shutting_down: Arc<AtomicBool>,
    ) -> Result<(Worker, ModelInfo), String> {
        let (ready, loaded) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("pipeline".into())
            .spawn(move || {
                let loading = catch_unwind(AssertUnwindSafe(|| load(&source, options)));
                let loaded = loading.unwrap_or_else(|payload| {
                    let message = mlx::compile::panic_message(&*payload);
                    Err(format!("internal error while loading: {message}"))
                });
                let pipeline = match loaded {
                    Ok((pipeline, info)) => {
                        let loaded = memory::active_memory();
                        stats.baseline_bytes.store(loaded, Ordering::Relaxed);
                        stats.active_bytes.store(loaded, Ordering::Relaxed);
                        let _ = ready.send(Ok(info));
                        pipeline
                    }
                    Err(error) => {
                        let _ = ready.send(Err(error));
                        return;
                    }
                };
                run(&pipeline, queue, &stats, &shutting_down);
            })
            .map_err(|e| format!("starting the pipeline thread: {e}"))?;
        match loaded.recv() {
            Ok(Ok(info)) => Ok((Worker { thread }, info)),
            Ok(Err(error)) => Err(error),
            Err(_) => Err("the pipeline thread ended while loading".into()),
        }
    }

    /// Waits for the thread to finish its jobs.
    pub fn join(self) {
        let _ = self.thread.join();
    }
}

fn load(source: &ModelSource, options: LoadOptions) -> Result<(Pipeline, ModelInfo), String> {
    let dtype = options.dtype;
    let pipeline = Pipeline::load(source, options).map_err(|e| e.to_string())?;
    for (spec, applied) in &pipeline.adapters {
        tracing::info!(
            lora = %spec.path.display(),
            scale = spec.scale,
            layers = applied.layers,
            skipped = applied.skipped.len(),
            "adapter applied"
        );
    }
    if !pipeline.has_text_encoder() || pipeline.vae.is_none() {
        return Err(format!(
            "{source} is a transformer checkpoint: serving needs a pipeline with a text \
             encoder and a VAE"
        ));
    }
    let id = match source {
        ModelSource::Builtin(_) => source.to_string(),
        ModelSource::Dir(dir) => dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| source.to_string()),
    };
    let info = ModelInfo {
        id,
        created: unix_now(),
        report: crate::info::report_json(source, &pipeline, dtype),
        default_size: pipeline.default_size(),
    };
    Ok((pipeline, info))
}

/// Takes jobs until the queue closes. Once shutting down, the jobs still queued are
/// answered 503 without running.
fn run(
    pipeline: &Pipeline,
    mut queue: mpsc::Receiver<Job>,
    stats: &Stats,
    shutting_down: &AtomicBool,
) {
    while let Some(job) = queue.blocking_recv() {
        if shutting_down.load(Ordering::Relaxed) {
            let _ = job.events.send(Event::Done(Err(ApiError::shutting_down())));
            continue;
        }
        if job.cancelled() {
            stats.cancelled.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let _ = job.events.send(Event::Started {
            waited: job.enqueued.elapsed(),
        });
        stats.running.store(true, Ordering::Relaxed);
        // A bug in one request must not take the server down with it.
        let outcome = catch_unwind(AssertUnwindSafe(|| draw(pipeline, &job, stats)))
            .unwrap_or_else(|payload| {
                let message = mlx::compile::panic_message(&*payload);
                Err(Failure::Api(ApiError::internal(format!(
                    "internal error: {message}"
                ))))
            });
        stats.running.store(false, Ordering::Relaxed);
        let counter = match &outcome {
            Ok(_) => &stats.completed,
            Err(Failure::Cancelled) => &stats.cancelled,
            Err(Failure::Api(_)) => &stats.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        // Measured once the job's arrays are gone (before its handler hears back, so what
        // the client sees next is current): what the server holds between requests.
        stats
            .active_bytes
            .store(memory::active_memory(), Ordering::Relaxed);
        if let Err(Failure::Api(error)) = &outcome {
            tracing::warn!(
                id = job.id,
                status = error.status.as_u16(),
                "{}",
                error.message
            );
        }
        match outcome {
            Ok(images) => {
                let _ = job.events.send(Event::Done(Ok(images)));
            }
            Err(Failure::Api(error)) => {
                let _ = job.events.send(Event::Done(Err(error)));
            }
            Err(Failure::Cancelled) => tracing::debug!(id = job.id, "cancelled"),
        }
    }
}

/// Why a job produced no pictures.
enum Failure {
    Cancelled,
    Api(ApiError),
}

impl From<zimage::Error> for Failure {
    fn from(error: zimage::Error) -> Failure {
        match error {
            zimage::Error::Cancelled => Failure::Cancelled,
            other => Failure::Api(other.into()),
        }
    }
}

/// Draws the job's pictures one after another, as `dit generate --seed` would draw each.
fn draw(pipeline: &Pipeline, job: &Job, stats: &Stats) -> Result<Images, Failure> {
    let g = &job.generation;
    let guided = g.guidance_scale > 0.0;
    let mut prompts = vec![g.prompt.as_str()];
    // The negative prompt is encoded only when guidance uses it, as diffusers does.
    if guided {
        prompts.push(&g.negative_prompt);
    }
    let embeds = pipeline.encode_prompts(&prompts, MAX_SEQUENCE_LENGTH)?;
    if embeds[0].dropped > 0 {
        tracing::warn!(
            id = job.id,
            dropped = embeds[0].dropped,
            "the prompt is longer than {MAX_SEQUENCE_LENGTH} tokens: its end was dropped"
        );
    }
    let caption = Caption::from_embeds(&embeds[0].embeds);
    let negative = embeds
        .get(1)
        .map_or_else(|| caption.clone(), |e| Caption::from_embeds(&e.embeds));
    drop(embeds);
    let total = g.n * g.steps;
    let mut pictures = Vec::with_capacity(g.n);
    for k in 0..g.n {
        if job.cancelled() {
            return Err(Failure::Cancelled);
        }
        let seed = g.seed.wrapping_add(k as u64);
        let request = Request {
            width: g.width,
            height: g.height,
            steps: g.steps,
            noise: Noise::Seeded(seed),
            guidance: Guidance {
                scale: g.guidance_scale,
                ..Guidance::off()
            },
            caption: caption.clone(),
            negative: negative.clone(),
            scheduler: pipeline.scheduler.clone(),
            teacache: TeaCacheOptions::off(),
            record_changes: false,
        };
        let (events, cancel) = (job.events.clone(), Arc::clone(&job.cancel));
        let peak = Arc::clone(&stats.peak_bytes);
        let done_before = k * g.steps;
        let generation =
            sampler::generate_until(pipeline.transformer(), &request, None, move |i, report| {
                peak.fetch_max(report.peak_bytes, Ordering::Relaxed);
                let progress = Event::Progress {
                    step: done_before + i + 1,
                    total,
                };
                if events.send(progress).is_err() || cancel.load(Ordering::Relaxed) {
                    ControlFlow::Break(())
                } else {
                    ControlFlow::Continue(())
                }
            })?;
        if job.cancelled() {
            return Err(Failure::Cancelled);
        }
        memory::reset_peak_memory().map_err(zimage::Error::from)?;
        let image = pipeline.decode(&generation.latents, Tiling::Auto)?;
        drop(generation);
        let parameters = Parameters {
            prompt: Some(g.prompt.clone()),
            negative_prompt: g.negative_prompt.clone(),
            seed: seed.to_string(),
            steps: g.steps,
            guidance_scale: g.guidance_scale,
            width: g.width,
            height: g.height,
            model: pipeline.source.to_string(),
            strength: None,
            image: None,
            mask: None,
            loras: pipeline.loras_text(),
        };
        for rgb in picture::to_rgb8(&image)? {
            pictures.push((picture::png_bytes(&rgb, &parameters.text())?, seed));
        }
        stats
            .peak_bytes
            .fetch_max(memory::peak_memory(), Ordering::Relaxed);
    }
    Ok(Images {
        created: unix_now(),
        pictures,
    })
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
