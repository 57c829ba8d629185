//! Decoding speed against mlx-lm, in one run, on the same weights and prompt: a
//! Qwen3-0.6B-shaped causal LM with random weights (stored bfloat16, computed in float32),
//! greedy, on the CPU.
//!
//! ```text
//! cargo run --release -p qwen3 --example bench_generate [-- NEW_TOKENS [TRIALS]]
//! ```
//!
//! The first run writes the checkpoint to `target/bench-qwen3-0.6b/` (1.2 GB). The Python
//! side is `bench_generate_mlx_lm.py` beside this file, run with `$MLX_LM_PYTHON` (default
//! `python3`), which needs `mlx-lm` and `mlx-cpu` of the runtime's MLX version
//! (`pip install mlx-lm mlx-cpu==0.32.4`). MLX's wheel calls a reference BLAS 40 times
//! slower than OpenBLAS, to which this runtime links: the Python process gets OpenBLAS
//! too, through `LD_PRELOAD`, so both sides run the same matmul kernels. Both use the
//! machine's 2 cores (`OPENBLAS_NUM_THREADS=2` for Python; ours is linked at build time
//! and uses OpenBLAS's default, one thread per core).
//!
//! Target: our decode tokens/s at least mlx-lm's.

use std::io::{BufRead, BufReader, Write};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::Instant;

use mlx::Dtype;
use qwen3::{weights, GenerateOptions, Message, Qwen3Config, Sampling, Tokenizer};
use serde_json::Value;

/// Qwen3-0.6B's `config.json`.
fn qwen3_0_6b() -> Qwen3Config {
    Qwen3Config {
        vocab_size: 151_936,
        hidden_size: 1024,
        intermediate_size: 3072,
        num_hidden_layers: 28,
        num_attention_heads: 16,
        num_key_value_heads: 8,
        head_dim: 128,
        rms_norm_eps: 1e-6,
        rope_theta: 1_000_000.0,
        tie_word_embeddings: true,
        max_position_embeddings: 40_960,
        dtype: None,
        architectures: vec!["Qwen3ForCausalLM".into()],
        quantization: None,
    }
}

const PROMPT: &str = "Write a short story about a red fox who crosses a frozen lake at dawn, \
    meets an old fisherman mending his nets, and learns why the ice sings in the cold. \
    Describe the light, the sounds and the smell of the snow, and end with the fox going home.";

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn checkpoint(dir: &Path) -> Result<(), Box<dyn std::error::Error>> {
    if dir.join("model.safetensors").exists() {
        return Ok(());
    }
    eprintln!(
        "writing a random Qwen3-0.6B-shaped checkpoint to {}",
        dir.display()
    );
    let model = weights::builtin_causal_lm(&qwen3_0_6b(), Dtype::F32)?;
    weights::save_causal_lm(&model, dir, Dtype::Bf16)?;
    Ok(())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let new_tokens: usize = args.first().map_or(Ok(128), |a| a.parse())?;
    let trials: usize = args.get(1).map_or(Ok(3), |a| a.parse())?;
    let exe = std::env::current_exe()?;
    // The executable is target/<profile>/examples/bench_generate.
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or("unexpected executable location")?;
    let dir = target.join("bench-qwen3-0.6b");
    checkpoint(&dir)?;

    let tokenizer = Tokenizer::builtin()?;
    let text = tokenizer.apply_chat_template(&[Message::user(PROMPT)], true, true)?;
    let prompt = tokenizer.encode(&text)?;
    let info = mlx::build_info();
    println!(
        "MLX {} ({}), BLAS {}; Qwen3-0.6B-shaped random weights (bf16 on disk, f32 compute), \
         {} prompt tokens, {new_tokens} new tokens, greedy, median of {trials} alternating trials",
        info.mlx_version,
        info.origin,
        info.blas,
        prompt.len()
    );

    let mut theirs = if std::env::var_os("QWEN3_BENCH_OURS_ONLY").is_some() {
        None
    } else {
        Some(MlxLm::start(&dir, &prompt)?)
    };
    let load = Instant::now();
    let model = weights::load_causal_lm(&dir, Dtype::F32)?;
    let load_s = load.elapsed().as_secs_f64();
    let options = GenerateOptions {
        max_tokens: new_tokens,
        sampling: Sampling::GREEDY,
        ..GenerateOptions::default()
    };
    let warm = GenerateOptions {
        max_tokens: 8,
        ..options.clone()
    };
    model.generate(&prompt, &warm, |_| ControlFlow::Continue(()))?;

    // Trials alternate, so that both sides see the same load on a shared machine.
    let (mut ours, mut their_runs) = (Vec::new(), Vec::new());
    for trial in 0..trials {
        if let Some(theirs) = &mut theirs {
            their_runs.push(theirs.run(new_tokens)?);
        }
        let g = model.generate(&prompt, &options, |_| ControlFlow::Continue(()))?;
        ours.push((
            g.prefill_time.as_secs_f64(),
            g.decode_time.as_secs_f64(),
            g.tokens,
        ));
        eprintln!(
            "trial {trial}: ours {:.2} s, mlx-lm {:.2} s of decoding",
            ours[trial].1,
            their_runs.last().map_or(f64::NAN, |r| r.1)
        );
    }
    let steps = (new_tokens - 1) as f64;
    let p = prompt.len() as f64;
    let figures = |runs: &[(f64, f64, Vec<u32>)]| {
        (
            p / median(runs.iter().map(|r| r.0).collect()),
            steps / median(runs.iter().map(|r| r.1).collect()),
        )
    };
    let (our_prefill, our_decode) = figures(&ours);
    let (their_prefill, their_decode) = if their_runs.is_empty() {
        (f64::NAN, f64::NAN)
    } else {
        figures(&their_runs)
    };
    println!("{:<28}{:>14}{:>14}", "", "ours", "mlx-lm");
    println!(
        "{:<28}{:>14.2}{:>14.2}",
        "prefill tokens/s", our_prefill, their_prefill
    );
    println!(
        "{:<28}{:>14.2}{:>14.2}",
        "decode tokens/s", our_decode, their_decode
    );
    let same = their_runs.last().map(|r| &r.2) == ours.last().map(|r| &r.2);
    println!(
        "decode: ours / mlx-lm = {:.3}; same tokens: {same}; ours loaded in {load_s:.1} s ({})",
        our_decode / their_decode,
        theirs
            .as_ref()
            .map_or("mlx-lm not run", |t| t.versions.as_str()),
    );
    Ok(())
}

/// mlx-lm in a Python process of its own (bench_generate_mlx_lm.py), running one timed
/// generation per request.
struct MlxLm {
    child: Child,
    stdout: BufReader<ChildStdout>,
    versions: String,
}

impl MlxLm {
    fn start(dir: &Path, prompt: &[u32]) -> Result<MlxLm, Box<dyn std::error::Error>> {
        let python = std::env::var("MLX_LM_PYTHON").unwrap_or_else(|_| "python3".into());
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bench_generate_mlx_lm.py");
        let mut command = Command::new(&python);
        command
            .arg(&script)
            .arg(dir)
            .arg(serde_json::to_string(prompt)?)
            .env("OPENBLAS_NUM_THREADS", "2")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(blas) = openblas() {
            command.env("LD_PRELOAD", blas);
        }
        let mut child = command
            .spawn()
            .map_err(|e| format!("{python} {}: {e}", script.display()))?;
        let stdout = BufReader::new(child.stdout.take().ok_or("no stdout")?);
        let mut mlx_lm = MlxLm {
            child,
            stdout,
            versions: String::new(),
        };
        let ready = mlx_lm.line()?;
        mlx_lm.versions = format!(
            "mlx-lm {} on MLX {}",
            ready["mlx_lm"].as_str().unwrap_or("?"),
            ready["mlx"].as_str().unwrap_or("?")
        );
        Ok(mlx_lm)
    }

    fn line(&mut self) -> Result<Value, Box<dyn std::error::Error>> {
        let mut line = String::new();
        if self.stdout.read_line(&mut line)? == 0 {
            return Err("the mlx-lm script ended early (its error is above)".into());
        }
        Ok(serde_json::from_str(&line)?)
    }

    /// (prefill seconds, decode seconds, tokens) of one run.
    fn run(
        &mut self,
        new_tokens: usize,
    ) -> Result<(f64, f64, Vec<u32>), Box<dyn std::error::Error>> {
        let stdin = self.child.stdin.as_mut().ok_or("no stdin")?;
        writeln!(stdin, "{new_tokens}")?;
        stdin.flush()?;
        let run = self.line()?;
        let seconds = |key: &str| {
            run[key]
                .as_f64()
                .ok_or_else(|| format!("no {key} from mlx-lm"))
        };
        Ok((
            seconds("prefill_s")?,
            seconds("decode_s")?,
            serde_json::from_value(run["tokens"].clone())?,
        ))
    }
}

impl Drop for MlxLm {
    fn drop(&mut self) {
        // Closing stdin ends the script's loop.
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }
}

/// The OpenBLAS shared library, if the system has one where Debian puts it.
fn openblas() -> Option<PathBuf> {
    [
        "/usr/lib/x86_64-linux-gnu/libopenblas.so.0",
        "/usr/lib/aarch64-linux-gnu/libopenblas.so.0",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}
