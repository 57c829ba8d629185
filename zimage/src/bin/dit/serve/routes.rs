//! The HTTP side: routes, the generation handler (a JSON answer or server-sent events),
//! the models and health endpoints, and one log line per request.

use std::convert::Infallible;
use std::hash::{BuildHasher, RandomState};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, Request, State};
use axum::http::{Method, StatusCode, Uri};
use axum::response::sse::{self, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::worker::{Event, Images, Job, ModelInfo, Stats};
use zimage::api::{self, Generation, Limits};

/// Larger bodies are refused (413): a request is a prompt and a few numbers.
pub const MAX_BODY_BYTES: usize = 1 << 20;

/// What every handler shares.
pub struct AppState {
    pub queue: mpsc::Sender<Job>,
    pub stats: Arc<Stats>,
    pub shutting_down: Arc<AtomicBool>,
    pub model: ModelInfo,
    pub limits: Limits,
    next_id: AtomicU64,
    rejected: AtomicU64,
    seeds: RandomState,
}

impl AppState {
    pub fn new(
        queue: mpsc::Sender<Job>,
        stats: Arc<Stats>,
        shutting_down: Arc<AtomicBool>,
        model: ModelInfo,
        limits: Limits,
    ) -> AppState {
        AppState {
            queue,
            stats,
            shutting_down,
            model,
            limits,
            next_id: AtomicU64::new(1),
            rejected: AtomicU64::new(0),
            seeds: RandomState::new(),
        }
    }

    fn log(&self, route: &'static str) -> RequestLog {
        RequestLog {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            route,
            started: Instant::now(),
            generation: None,
            waited: None,
            status: None,
        }
    }

    /// Jobs waiting behind the running one.
    fn queued(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }

    /// Queues `generation`, or says why not (429 when the queue is full).
    fn submit(&self, id: u64, generation: Generation) -> Result<Ticket, ApiError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(ApiError::shutting_down());
        }
        let (events, receiver) = mpsc::unbounded_channel();
        let cancel = Arc::new(AtomicBool::new(false));
        let job = Job {
            id,
            generation,
            cancel: Arc::clone(&cancel),
            events,
            enqueued: Instant::now(),
        };
        match self.queue.try_send(job) {
            Ok(()) => Ok(Ticket {
                events: receiver,
                _cancel: CancelOnDrop(cancel),
            }),
            Err(mpsc::error::TrySendError::Full(_)) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                Err(ApiError::queue_full(self.queue.max_capacity()))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Err(ApiError::shutting_down()),
        }
    }
}

/// A queued job as its handler holds it: its events, and its cancellation when the
/// handler (or the stream it answers with) is dropped because the client went away.
struct Ticket {
    events: mpsc::UnboundedReceiver<Event>,
    _cancel: CancelOnDrop,
}

struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// One line per request, written when it ends however it ends; a request whose client
/// went away first logs status 499 (nginx's "client closed request").
struct RequestLog {
    id: u64,
    route: &'static str,
    started: Instant,
    generation: Option<(String, usize, usize)>,
    waited: Option<Duration>,
    status: Option<StatusCode>,
}

impl RequestLog {
    fn finish(mut self, response: impl IntoResponse) -> Response {
        let mut response = response.into_response();
        self.status = Some(response.status());
        if let Ok(id) = self.id.to_string().parse() {
            response.headers_mut().insert("x-request-id", id);
        }
        response
    }
}

impl Drop for RequestLog {
    fn drop(&mut self) {
        let ms = |d: Duration| (d.as_secs_f64() * 1e3).round() as u64;
        let (size, steps, n) = match &self.generation {
            Some((size, steps, n)) => (Some(size.as_str()), Some(*steps), Some(*n)),
            None => (None, None, None),
        };
        tracing::info!(
            id = self.id,
            route = self.route,
            size,
            steps,
            n,
            wait_ms = self.waited.map(ms),
            time_ms = ms(self.started.elapsed()),
            status = self.status.map_or(499, |s| s.as_u16()),
            "request"
        );
    }
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/images/generations", post(generations))
        .route("/v1/models", get(models))
        .route("/v1/models/{id}", get(model))
        .route("/health", get(health))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn generations(State(state): State<Arc<AppState>>, request: Request) -> Response {
    let mut log = state.log("POST /v1/images/generations");
    let body = match read_body(request).await {
        Ok(body) => body,
        Err(error) => return log.finish(error),
    };
    let seed = || state.seeds.hash_one((log.id, SystemTime::now()));
    let generation = match api::parse(&body, &state.limits, seed) {
        Ok(generation) => generation,
        Err(error) => return log.finish(ApiError::from(error)),
    };
    log.generation = Some((
        format!("{}x{}", generation.width, generation.height),
        generation.steps,
        generation.n,
    ));
    let stream = generation.stream;
    let ticket = match state.submit(log.id, generation) {
        Ok(ticket) => ticket,
        Err(error) => return log.finish(error),
    };
    if stream {
        stream_events(ticket, log)
    } else {
        answer_when_done(ticket, log).await
    }
}

/// Bytes of an oversized body read and thrown away before answering 413: a client still
/// sending when the server closes would see a reset instead of the answer.
const DRAIN_BYTES: usize = 64 << 20;

/// The body, at most [`MAX_BODY_BYTES`].
async fn read_body(request: Request) -> Result<Bytes, ApiError> {
    let mut body = request.into_body();
    let mut bytes = Vec::new();
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::invalid(None, format!("reading the body: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        seen = seen.saturating_add(data.len());
        if seen > DRAIN_BYTES {
            break;
        }
        if seen <= MAX_BODY_BYTES {
            bytes.extend_from_slice(&data);
        }
    }
    if seen > MAX_BODY_BYTES {
        return Err(ApiError::too_large(MAX_BODY_BYTES));
    }
    Ok(bytes.into())
}

/// Waits for the job and answers with its pictures (or its error).
async fn answer_when_done(mut ticket: Ticket, mut log: RequestLog) -> Response {
    loop {
        match ticket.events.recv().await {
            Some(Event::Started { waited }) => log.waited = Some(waited),
            Some(Event::Progress { .. }) => {}
            Some(Event::Done(Ok(images))) => return log.finish(Json(answer(&images))),
            Some(Event::Done(Err(error))) => return log.finish(error),
            None => return log.finish(worker_gone()),
        }
    }
}

/// Answers with `text/event-stream`: `progress` after each step, then `done` with the
/// answer or `error` with the error object.
fn stream_events(ticket: Ticket, log: RequestLog) -> Response {
    let event = |name: &str, data: &Value| sse::Event::default().event(name).data(data.to_string());
    let events = futures_util::stream::unfold(Some((ticket, log)), move |state| async move {
        let (mut ticket, mut log) = state?;
        let (event, last) = loop {
            match ticket.events.recv().await {
                Some(Event::Started { waited }) => log.waited = Some(waited),
                Some(Event::Progress { step, total }) => {
                    break (
                        event("progress", &json!({ "step": step, "total": total })),
                        false,
                    )
                }
                Some(Event::Done(Ok(images))) => {
                    log.status = Some(StatusCode::OK);
                    break (event("done", &answer(&images)), true);
                }
                Some(Event::Done(Err(error))) => {
                    log.status = Some(error.status);
                    break (event("error", &error.body()), true);
                }
                None => {
                    let error = worker_gone();
                    log.status = Some(error.status);
                    break (event("error", &error.body()), true);
                }
            }
        };
        let next = (!last).then_some((ticket, log));
        Some((Ok::<_, Infallible>(event), next))
    });
    Sse::new(events)
        .keep_alive(KeepAlive::default())
        .into_response()
}

fn worker_gone() -> ApiError {
    ApiError::internal("the pipeline thread stopped")
}

/// OpenAI's images answer, each picture with the seed it was drawn from.
fn answer(images: &Images) -> Value {
    let engine = base64::engine::general_purpose::STANDARD;
    let data: Vec<Value> = images
        .pictures
        .iter()
        .map(|(png, seed)| json!({ "b64_json": engine.encode(png), "seed": seed }))
        .collect();
    json!({ "created": images.created, "data": data })
}

fn model_object(model: &ModelInfo) -> Value {
    json!({
        "id": model.id,
        "object": "model",
        "created": model.created,
        "owned_by": "dit",
    })
}

async fn models(State(state): State<Arc<AppState>>) -> Response {
    let log = state.log("GET /v1/models");
    log.finish(Json(json!({
        "object": "list",
        "data": [model_object(&state.model)],
    })))
}

/// OpenAI's model object with what `dit info --json` reports.
async fn model(
    State(state): State<Arc<AppState>>,
    id: Result<Path<String>, PathRejection>,
) -> Response {
    let log = state.log("GET /v1/models/{id}");
    let id = match id {
        Ok(Path(id)) => id,
        Err(rejection) => return log.finish(ApiError::invalid(None, rejection.body_text())),
    };
    if id != state.model.id {
        return log.finish(ApiError::model_not_found(&id));
    }
    let mut object = model_object(&state.model);
    if let (Some(object), Some(report)) = (object.as_object_mut(), state.model.report.as_object()) {
        object.extend(report.clone());
    }
    log.finish(Json(object))
}

async fn health(State(state): State<Arc<AppState>>) -> Response {
    let log = state.log("GET /health");
    let stats = &state.stats;
    let shutting_down = state.shutting_down.load(Ordering::Relaxed);
    let count = |c: &AtomicU64| c.load(Ordering::Relaxed);
    let bytes = |b: &std::sync::atomic::AtomicUsize| b.load(Ordering::Relaxed);
    let body = json!({
        "status": if shutting_down { "shutting_down" } else { "ok" },
        "model": state.model.id,
        "queued": state.queued(),
        "running": stats.running.load(Ordering::Relaxed),
        "completed": count(&stats.completed),
        "cancelled": count(&stats.cancelled),
        "failed": count(&stats.failed),
        "rejected": count(&state.rejected),
        "active_bytes": bytes(&stats.active_bytes),
        "baseline_bytes": bytes(&stats.baseline_bytes),
        "peak_bytes": bytes(&stats.peak_bytes),
    });
    let status = if shutting_down {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    log.finish((status, Json(body)))
}

async fn not_found(State(state): State<Arc<AppState>>, method: Method, uri: Uri) -> Response {
    let log = state.log("not found");
    log.finish(ApiError::not_found(format!(
        "no route for {method} {}",
        uri.path()
    )))
}

async fn method_not_allowed(
    State(state): State<Arc<AppState>>,
    method: Method,
    uri: Uri,
) -> Response {
    let log = state.log("method not allowed");
    log.finish(ApiError::method_not_allowed(method.as_str(), uri.path()))
}
