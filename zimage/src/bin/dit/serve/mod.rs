//! `dit serve`: OpenAI's images API over a pipeline loaded once. One worker thread owns
//! the pipeline ([`worker`]); handlers queue jobs for it and answer when they are done or
//! stream their progress ([`routes`]); request bodies are read field by field (`zimage::api`);
//! errors take OpenAI's shape ([`error`]).
//!
//! Shutdown (SIGINT or SIGTERM): the listener stops accepting, the running request
//! finishes, the queued ones are answered 503, and the command exits 0.

mod error;
mod routes;
mod worker;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use dit::weights::ModelSource;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;
use zimage::pipeline::{LoadOptions, LoraSpec};
use zimage::sampler;

use crate::quantize_arg::QuantizeArg;
use crate::{compute_dtype, model_source, CliResult, FloatDtype};
use routes::AppState;
use worker::{Stats, Worker};
use zimage::api::Limits;

#[derive(clap::Args)]
pub struct Args {
    /// tiny, small, or a diffusers pipeline folder.
    #[arg(long, value_parser = model_source, default_value = "tiny")]
    model: ModelSource,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Port to listen on (0: any free port; the line printed at start says which).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Requests that may wait while one runs; more are answered 429.
    #[arg(long, default_value_t = 16)]
    queue: usize,
    /// Largest width or height a request may ask for, in pixels.
    #[arg(long, default_value_t = 2048)]
    max_size: i32,
    /// Most denoising steps a request may ask for.
    #[arg(long, default_value_t = 100)]
    max_steps: usize,
    /// Compute dtype (default: f32 on the CPU, bf16 on a GPU).
    #[arg(long, value_enum)]
    dtype: Option<FloatDtype>,
    #[command(flatten)]
    quantize: QuantizeArg,
    /// A LoRA adapter for the transformer, FILE or FILE:SCALE (default scale 1);
    /// repeatable. Applied at load to every request.
    #[arg(long = "lora", value_name = "FILE[:SCALE]", value_parser = LoraSpec::parse)]
    loras: Vec<LoraSpec>,
    /// Skip (and count) adapter layers that match no layer of the transformer instead of
    /// refusing the adapter.
    #[arg(long)]
    lora_lenient: bool,
}

pub fn run(args: Args) -> CliResult {
    check_flags(&args)?;
    // Logs go to stderr; stdout carries the one line that says where to connect.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(tracing::Level::INFO)
        .with_target(false)
        .init();
    let dtype = compute_dtype(args.dtype)?;
    let options = LoadOptions {
        quantize: args.quantize.config()?,
        matmul: args.quantize.matmul(),
        // Prompts are encoded for every request: the encoder stays loaded.
        keep_text_encoder: true,
        loras: args.loras.clone(),
        lora_lenient: args.lora_lenient,
        ..LoadOptions::from(dtype)
    };
    let (queue, jobs) = mpsc::channel(args.queue);
    let stats = Arc::new(Stats::default());
    let shutting_down = Arc::new(AtomicBool::new(false));
    crate::note_kernel_compilation();
    let (worker, model) = Worker::start(
        args.model.clone(),
        options,
        jobs,
        Arc::clone(&stats),
        Arc::clone(&shutting_down),
    )?;
    let limits = Limits {
        model: model.id.clone(),
        max_size: args.max_size,
        max_steps: args.max_steps,
        default_size: model.default_size.min(args.max_size),
        default_steps: sampler::DEFAULT_STEPS.min(args.max_steps),
    };
    let state = Arc::new(AppState::new(queue, stats, shutting_down, model, limits));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("starting the HTTP runtime: {e}"))?;
    let served = runtime.block_on(serve(&args, Arc::clone(&state)));
    // The last queue sender goes with the state: the worker ends after its last job.
    drop(state);
    worker.join();
    served
}

fn check_flags(args: &Args) -> CliResult {
    if args.queue == 0 {
        return Err("--queue must be at least 1".into());
    }
    sampler::check_side(args.max_size).map_err(|e| format!("--max-size {}: {e}", args.max_size))?;
    if !(1..=sampler::MAX_STEPS).contains(&args.max_steps) {
        return Err(format!(
            "--max-steps must be between 1 and {}, found {}",
            sampler::MAX_STEPS,
            args.max_steps
        )
        .into());
    }
    Ok(())
}

async fn serve(args: &Args, state: Arc<AppState>) -> CliResult {
    // Installed before the address is announced, so a signal right after it is ours.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let listener = tokio::net::TcpListener::bind((args.host.as_str(), args.port))
        .await
        .map_err(|e| format!("--host {} --port {}: {e}", args.host, args.port))?;
    let address = listener.local_addr()?;
    let mut stdout = std::io::stdout();
    writeln!(stdout, "listening on http://{address}")?;
    stdout.flush()?;
    tracing::info!(
        model = state.model.id,
        queue = args.queue,
        "listening on http://{address}"
    );
    let shutting_down = Arc::clone(&state.shutting_down);
    let shutdown = async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
        tracing::info!(
            "shutting down: finishing the running request, answering the queued ones 503 \
             (a second signal exits at once)"
        );
        shutting_down.store(true, Ordering::Relaxed);
        // The handlers replace the signals' default action: without this, a long request
        // would leave nothing but SIGKILL to stop the server.
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            eprintln!("error: a second signal: exiting without finishing the running request");
            // `_exit`, not `exit`: exit's handlers destroy MLX's globals while the worker
            // thread may be computing with them (a segfault, seen here).
            // SAFETY: `_exit` ends the process and touches no memory of it.
            unsafe { libc::_exit(1) }
        });
    };
    axum::serve(listener, routes::router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
