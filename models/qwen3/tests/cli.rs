//! The `qwen3` command: streamed text equal to transformers' greedy tokens, the JSON
//! report, and bad flags as one `error:` line.

use std::path::Path;
use std::process::{Command, Output};

use qwen3::Tokenizer;
use serde_json::Value;

mod common;
use common::fixtures;

fn qwen3(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_qwen3"))
        .args(args)
        .output()
        .unwrap()
}

/// A model directory as published: qwen3_a's checkpoint with the tokenizer beside it.
fn model_dir(dir: &Path) -> String {
    for entry in std::fs::read_dir(fixtures().join("qwen3_a")).unwrap() {
        let path = entry.unwrap().path();
        std::fs::copy(&path, dir.join(path.file_name().unwrap())).unwrap();
    }
    let tokenizer = Path::new(env!("CARGO_MANIFEST_DIR")).join("tokenizer");
    for name in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tokenizer.join(name), dir.join(name)).unwrap();
    }
    dir.display().to_string()
}

fn case(name: &str) -> Vec<u32> {
    let text = std::fs::read_to_string(fixtures().join("generate.json")).unwrap();
    let json: Value = serde_json::from_str(&text).unwrap();
    let case = json["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name)
        .unwrap();
    let ids = case["output_ids"].as_array().unwrap();
    ids.iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn greedy_text_is_transformers_tokens_decoded() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_dir(dir.path());
    let tokenizer = Tokenizer::builtin().unwrap();
    for (name, extra) in [("a_think", None), ("a_no_think", Some("--no-thinking"))] {
        let mut args = vec![
            "generate",
            "--model",
            &model,
            "--prompt",
            "a red fox in the snow",
        ];
        args.extend(["--max-tokens", "64"]);
        args.extend(extra);
        let text = stdout(&qwen3(&args));
        // The run stops at the checkpoint's eos token (602) if transformers' tokens hold it.
        let mut expected = case(name);
        if let Some(stop) = expected.iter().position(|&t| t == 602) {
            expected.truncate(stop);
        }
        let expected = tokenizer.decode(&expected, true).unwrap();
        assert_eq!(text, expected + "\n", "{name}");
    }
}

#[test]
fn json_reports_speeds_and_memory_every_64_tokens() {
    let out = qwen3(&[
        "generate",
        "--model",
        "tiny",
        "--prompt",
        "hi",
        "--max-tokens",
        "130",
    ]);
    let plain = stdout(&out);
    let out = qwen3(&[
        "generate",
        "--model",
        "tiny",
        "--prompt",
        "hi",
        "--max-tokens",
        "130",
        "--json",
    ]);
    let text = stdout(&out);
    let (streamed, report) = text.trim_end().rsplit_once('\n').unwrap();
    assert_eq!(format!("{streamed}\n"), plain);
    let report: Value = serde_json::from_str(report).unwrap();
    assert_eq!(report["generated_tokens"], 130);
    assert_eq!(report["stopped"], false);
    for key in ["prefill_tokens_per_second", "decode_tokens_per_second"] {
        assert!(report[key].as_f64().unwrap() > 0.0, "{key}: {report}");
    }
    let memory = report["memory"].as_array().unwrap();
    let tokens: Vec<u64> = memory
        .iter()
        .map(|m| m["tokens"].as_u64().unwrap())
        .collect();
    assert_eq!(tokens, [64, 128]);
    for m in memory {
        let (active, peak) = (
            m["active_bytes"].as_u64().unwrap(),
            m["peak_bytes"].as_u64().unwrap(),
        );
        assert!(active > 0 && peak >= active, "{m}");
    }
}

#[test]
fn sampling_flags_change_the_text_and_the_seed_fixes_it() {
    let dir = tempfile::tempdir().unwrap();
    let model = model_dir(dir.path());
    let run = |seed: &str| {
        stdout(&qwen3(&[
            "generate",
            "--model",
            &model,
            "--prompt",
            "hi",
            "--max-tokens",
            "40",
            "--temperature",
            "1.0",
            "--top-k",
            "50",
            "--top-p",
            "0.95",
            "--seed",
            seed,
        ]))
    };
    assert_eq!(run("3"), run("3"));
    assert_ne!(run("3"), run("4"));
}

#[test]
fn bad_flags_and_models_are_one_error_line() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let missing = missing.display().to_string();
    for (args, needle) in [
        (
            vec!["--model", "tiny", "--temperature", "-1"],
            "--temperature",
        ),
        (
            vec!["--model", "tiny", "--temperature", "nan"],
            "--temperature",
        ),
        (vec!["--model", "tiny", "--top-p", "0"], "--top-p"),
        (vec!["--model", "tiny", "--top-p", "1.5"], "--top-p"),
        (vec!["--model", &missing], missing.as_str()),
        (vec!["--model", ""], "--model"),
    ] {
        let mut full = vec!["generate", "--prompt", "hi"];
        full.extend(args.iter().copied());
        let out = qwen3(&full);
        assert_eq!(out.status.code(), Some(1), "{full:?}");
        assert!(out.stdout.is_empty(), "{full:?}");
        let err = String::from_utf8(out.stderr).unwrap();
        let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{err}");
        assert!(
            lines[0].starts_with("error: ") && lines[0].contains(needle),
            "{err}"
        );
    }
    // A directory without a tokenizer names the file it looked for.
    let bare = tempfile::tempdir().unwrap();
    for name in ["config.json", "model.safetensors"] {
        std::fs::copy(
            fixtures().join("qwen3_a").join(name),
            bare.path().join(name),
        )
        .unwrap();
    }
    let out = qwen3(&[
        "generate",
        "--model",
        &bare.path().display().to_string(),
        "--prompt",
        "hi",
    ]);
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("tokenizer.json"), "{err}");
}
