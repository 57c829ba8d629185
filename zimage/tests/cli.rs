//! The `dit` command end to end: its flags, files and JSON, and its errors (one `error:`
//! line and a non-zero exit, never a panic).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use mlx::io::{load_safetensors, save_safetensors};
use mlx::{random, Array, Dtype};
use serde_json::Value;

mod common;
use common::{fail, fixtures, last_json, path, relative_error, succeed};

#[test]
fn init_info_and_generate_on_the_written_directory() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("tiny");
    succeed(&["init", "--model", "tiny", "--out", path(&model)]);
    assert!(model.join("config.json").is_file());
    assert!(model.join("diffusion_pytorch_model.safetensors").is_file());

    let info = last_json(&succeed(&["info", "--model", path(&model), "--json"]));
    assert_eq!(info["architecture"], "ZImageTransformer2DModel");
    assert_eq!(info["layers"]["main"], 2);
    assert_eq!(info["quantization"]["mode"], "none");
    assert_eq!(info["quantization"]["quantized_layers"], 0);
    let builtin = last_json(&succeed(&["info", "--model", "tiny", "--json"]));
    assert_eq!(info["parameters"], builtin["parameters"]);
    assert!(succeed(&["info", "--model", path(&model)]).contains("parameters"));

    let png = dir.path().join("out.png");
    let latents = dir.path().join("latents.safetensors");
    let run = |model: &str, latents: &Path| {
        let stdout = succeed(&[
            "generate",
            "--model",
            model,
            "--steps",
            "3",
            "--width",
            "128",
            "--height",
            "96",
            "--seed",
            "7",
            "--out",
            path(&png),
            "--save-latents",
            path(latents),
            "--json",
        ]);
        last_json(&stdout)
    };
    let report = run(path(&model), &latents);
    for key in [
        "model",
        "steps",
        "width",
        "height",
        "forward_passes",
        "cache_hits",
        "step_ms",
        "active_bytes",
        "peak_bytes",
        "weights_bytes",
        "compute_dtype",
    ] {
        assert!(report.get(key).is_some(), "no `{key}` in {report}");
    }
    assert_eq!(report["forward_passes"], 3);
    assert_eq!(report["step_ms"].as_array().unwrap().len(), 3);
    assert_eq!(report["compute_dtype"], "float32");

    let decoder = png::Decoder::new(std::fs::File::open(&png).unwrap());
    let reader = decoder.read_info().unwrap();
    assert_eq!((reader.info().width, reader.info().height), (128, 96));
    let file = load_safetensors(&latents).unwrap();
    let from_dir = file.tensors.get("latents").unwrap();
    assert_eq!(from_dir.shape(), [1, 16, 12, 16]);

    // The directory holds exactly the built-in weights: the same run gives the same bits.
    let builtin_latents = dir.path().join("builtin.safetensors");
    run("tiny", &builtin_latents);
    let builtin = load_safetensors(&builtin_latents).unwrap();
    assert_eq!(
        builtin.tensors["latents"].to_vec::<f32>().unwrap(),
        from_dir.to_vec::<f32>().unwrap()
    );
}

#[test]
fn memory_is_flat_across_steps() {
    let runs: [&[&str]; 5] = [
        &[],
        &["--cfg", "3.5"],
        &["--no-compile"],
        &["--teacache", "naive", "--threshold", "0.3"],
        &["--teacache", "poly", "--threshold", "0.6", "--cfg", "2"],
    ];
    for extra in runs {
        let mut args = vec![
            "generate", "--steps", "5", "--width", "64", "--height", "64", "--json",
        ];
        args.extend_from_slice(extra);
        let report = last_json(&succeed(&args));
        let active: Vec<u64> = report["active_bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(active.len(), 5);
        assert!(
            active[1..].iter().all(|&a| a == active[1]),
            "{extra:?}: {active:?}"
        );
        let passes = report["forward_passes"].as_u64().unwrap();
        let hits = report["cache_hits"].as_u64().unwrap();
        assert_eq!(
            passes + hits,
            5,
            "{extra:?}: guidance batches both branches"
        );
        assert_eq!(
            hits > 0,
            extra.contains(&"--teacache"),
            "{extra:?}: {report}"
        );
    }
}

#[test]
fn teacache_flags_report_and_fit() {
    let dir = tempfile::tempdir().unwrap();
    fn with<'a>(extra: &[&'a str]) -> Vec<&'a str> {
        let mut args = vec![
            "generate", "--steps", "8", "--width", "64", "--height", "64", "--json",
        ];
        args.extend_from_slice(extra);
        args
    }
    let report = last_json(&succeed(&with(&[
        "--teacache",
        "naive",
        "--threshold",
        "0.3",
    ])));
    assert_eq!(report["teacache"]["mode"], "naive");
    assert_eq!(report["teacache"]["threshold"], 0.3);
    let passes = report["forward_passes"].as_u64().unwrap();
    let hits = report["cache_hits"].as_u64().unwrap();
    assert!(hits > 0 && passes + hits == 8, "{report}");
    let off = last_json(&succeed(&with(&[])));
    assert_eq!(off["teacache"]["mode"], "off");
    assert_eq!(off["cache_hits"], 0);

    // Fitted coefficients are written, and generate takes them.
    let fitted = dir.path().join("coefficients.json");
    succeed(&[
        "teacache-fit",
        "--model",
        "tiny",
        "--runs",
        "2",
        "--steps",
        "4",
        "--width",
        "64",
        "--height",
        "64",
        "--out",
        path(&fitted),
    ]);
    let json: Value = serde_json::from_str(&std::fs::read_to_string(&fitted).unwrap()).unwrap();
    assert_eq!(json["coefficients"].as_array().unwrap().len(), 5);
    assert_eq!(json["pairs"], 6);
    let report = last_json(&succeed(&with(&[
        "--teacache",
        "poly",
        "--coefficients",
        path(&fitted),
    ])));
    assert_eq!(report["teacache"]["coefficients"], json["coefficients"]);

    // A directory carries its coefficients; without them, poly says what to do.
    let model = dir.path().join("model");
    succeed(&["init", "--model", "tiny", "--out", path(&model)]);
    assert!(model.join("teacache_coefficients.json").is_file());
    succeed(&with(&["--model", path(&model), "--teacache", "poly"]));
    std::fs::remove_file(model.join("teacache_coefficients.json")).unwrap();
    assert!(fail(&with(&["--model", path(&model), "--teacache", "poly"])).contains("teacache-fit"));
    std::fs::write(&fitted, r#"{"coefficients": []}"#).unwrap();
    let err = fail(&with(&[
        "--teacache",
        "poly",
        "--coefficients",
        path(&fitted),
    ]));
    assert!(err.contains("coefficients"), "{err}");
    assert!(fail(&with(&["--teacache", "naive", "--threshold", "-1"])).contains("--threshold"));
    assert!(fail(&with(&["--teacache", "sometimes"])).contains("--teacache"));
}

#[test]
fn forward_matches_the_diffusers_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out.safetensors");
    let inputs = dit_fixtures().join("model_b_batch_mask.inputs.safetensors");
    let model = dit_fixtures().join("model_b");
    succeed(&[
        "forward",
        "--model",
        path(&model),
        "--inputs",
        path(&inputs),
        "--out",
        path(&out),
    ]);
    let ours = load_safetensors(&out).unwrap().tensors["out"]
        .to_vec::<f32>()
        .unwrap();
    let expected = load_safetensors(dit_fixtures().join("model_b_batch_mask.expected.safetensors"))
        .unwrap()
        .tensors["out"]
        .to_vec::<f32>()
        .unwrap();
    let err = relative_error(&ours, &expected);
    assert!(err <= 1e-4, "relative error {err}");
}

#[test]
fn caption_files_are_read_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, shape: &[i32]| {
        let file = dir.path().join(name);
        let feats = random::normal(shape, Dtype::F32, &random::key(3));
        save_safetensors(&file, [("cap_feats", &feats)], &BTreeMap::new()).unwrap();
        file
    };
    let good = write("good.safetensors", &[10, 64]);
    let base = [
        "generate",
        "--steps",
        "1",
        "--width",
        "32",
        "--height",
        "32",
        "--cap-feats",
    ];
    let mut args = base.to_vec();
    args.push(path(&good));
    succeed(&args);

    let narrow = write("narrow.safetensors", &[10, 32]);
    let mut args = base.to_vec();
    args.push(path(&narrow));
    assert!(fail(&args).contains("cap_feat_dim"));
}

#[test]
fn bad_input_is_one_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(fail(&["generate", "--bogus"]).contains("--bogus"));
    assert!(fail(&["generate", "--steps", "many"]).contains("--steps"));
    assert!(fail(&["generate", "--width", "100"]).contains("multiples of 16"));
    assert!(fail(&["generate", "--steps", "0"]).contains("between 1 and"));
    assert!(fail(&["generate", "--steps", "18446744073709551615"]).contains("between 1 and"));
    assert!(fail(&["generate", "--cfg", "nan"]).contains("--cfg"));
    assert!(fail(&["generate", "--cfg", "-2"]).contains("--cfg"));
    let err = fail(&[
        "teacache-fit",
        "--model",
        "tiny",
        "--steps",
        "100000000000",
        "--out",
        "x",
    ]);
    assert!(err.contains("--steps"), "{err}");
    assert!(fail(&["info", "--model", path(&d.join("nope"))]).contains("not a model directory"));
    assert!(fail(&["init", "--model", path(d), "--out", path(&d.join("x"))]).contains("built-in"));

    // A directory without weights, then with a malformed config.
    let model = d.join("model");
    succeed(&["init", "--model", "tiny", "--out", path(&model)]);
    let err = fail(&["init", "--model", "tiny", "--out", path(&model)]);
    assert!(err.contains("already holds a checkpoint"), "{err}");
    std::fs::write(model.join("config.json"), "{\"dim\": \"wide\"").unwrap();
    assert!(fail(&["info", "--model", path(&model)]).contains("config.json"));
    std::fs::write(model.join("config.json"), "{\"dim\": 64, \"n_heads\": 3}").unwrap();
    assert!(fail(&["info", "--model", path(&model)]).contains("divisible"));

    // Weights that do not fit the config: every problem is listed at once.
    let config = serde_json::json!({"dim": 64, "n_heads": 2, "n_layers": 3, "n_refiner_layers": 1,
        "cap_feat_dim": 64, "axes_dims": [8, 12, 12]});
    std::fs::write(model.join("config.json"), config.to_string()).unwrap();
    let err = fail(&["info", "--model", path(&model)]);
    assert!(
        err.contains("missing") && err.contains("layers.2.attention.to_q.weight"),
        "{err}"
    );

    // A truncated weights file.
    let weights = model.join("diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&weights).unwrap();
    std::fs::write(&weights, &bytes[..bytes.len() / 2]).unwrap();
    std::fs::write(
        model.join("config.json"),
        serde_json::json!({"dim": 64, "n_heads": 2,
        "n_layers": 2, "n_refiner_layers": 1, "cap_feat_dim": 64, "axes_dims": [8, 12, 12]})
        .to_string(),
    )
    .unwrap();
    assert!(fail(&["info", "--model", path(&model)]).contains("safetensors"));

    // forward: missing tensors and mismatched shapes.
    let inputs = d.join("inputs.safetensors");
    let latents = Array::zeros(&[1, 16, 8, 8], Dtype::F32);
    save_safetensors(&inputs, [("latents", &latents)], &BTreeMap::new()).unwrap();
    let out = d.join("out.safetensors");
    let args = [
        "forward",
        "--model",
        "tiny",
        "--inputs",
        path(&inputs),
        "--out",
        path(&out),
    ];
    assert!(fail(&args).contains("timestep"));
    let t = Array::zeros(&[1], Dtype::F32);
    let caps = Array::zeros(&[1, 4, 64], Dtype::F32);
    let lens = Array::from_slice(&[9i32], &[1]);
    save_safetensors(
        &inputs,
        [
            ("latents", &latents),
            ("timestep", &t),
            ("cap_feats", &caps),
            ("cap_lens", &lens),
        ],
        &BTreeMap::new(),
    )
    .unwrap();
    assert!(fail(&args).contains("exceeds"));
    assert!(!out.exists());
}

#[test]
fn the_command_runs_on_openblas_when_the_build_found_it() {
    if !mlx::build_info().blas.contains("OpenBLAS") {
        return; // built without OpenBLAS (MLX_NO_OPENBLAS, or not installed)
    }
    let Ok(ldd) = Command::new("ldd").arg(env!("CARGO_BIN_EXE_dit")).output() else {
        return; // no ldd on this system
    };
    let libraries = String::from_utf8_lossy(&ldd.stdout);
    assert!(
        libraries.contains("libopenblas"),
        "dit does not load OpenBLAS, so float32 matmul runs on the reference BLAS:\n{libraries}"
    );
}
