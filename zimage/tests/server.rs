//! `dit serve` on loopback with the built-in tiny pipeline, driven by a real HTTP client:
//! pictures, errors, streaming, cancellation, a full queue and shutdown.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use futures_util::future::join_all;
use reqwest::StatusCode;
use serde_json::{json, Value};

/// A running `dit serve`, killed when dropped.
struct Server {
    child: Child,
    base: String,
    log: Arc<Mutex<String>>,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        Server::start_model("tiny", extra)
    }

    fn start_model(model: &str, extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_dit"))
            .args(["serve", "--model", model, "--port", "0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("dit starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let base = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("first line {line:?}"))
            .to_string();
        let log = Arc::new(Mutex::new(String::new()));
        let sink = Arc::clone(&log);
        let mut stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut buf) {
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Server { child, base, log }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    async fn generate(&self, client: &reqwest::Client, body: Value) -> reqwest::Response {
        client
            .post(self.url("/v1/images/generations"))
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    async fn health(&self, client: &reqwest::Client) -> Value {
        client
            .get(self.url("/health"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// Polls the health endpoint until `done` holds (10 s at most).
    async fn wait_for(&self, client: &reqwest::Client, done: impl Fn(&Value) -> bool) -> Value {
        let started = Instant::now();
        loop {
            let health = self.health(client).await;
            if done(&health) {
                return health;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "health never got there: {health}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    fn terminate(&mut self) -> ExitStatus {
        self.signal();
        self.wait()
    }

    fn signal(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    fn wait(&mut self) -> ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "the server did not exit"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The pictures of an answer: (PNG bytes, seed).
fn pictures(answer: &Value) -> Vec<(Vec<u8>, u64)> {
    answer["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|item| {
            let png = base64::engine::general_purpose::STANDARD
                .decode(item["b64_json"].as_str().unwrap())
                .unwrap();
            (png, item["seed"].as_u64().unwrap())
        })
        .collect()
}

/// Width, height, RGB pixels and text chunks of a PNG.
fn decode_png(bytes: &[u8]) -> (u32, u32, Vec<u8>, Vec<(String, String)>) {
    let mut reader = png::Decoder::new(std::io::Cursor::new(bytes))
        .read_info()
        .unwrap();
    let mut pixels = vec![0; reader.output_buffer_size().unwrap()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    assert_eq!(frame.color_type, png::ColorType::Rgb);
    let text = reader
        .info()
        .utf8_text
        .iter()
        .map(|c| (c.keyword.clone(), c.get_text().unwrap()))
        .collect();
    (frame.width, frame.height, pixels, text)
}

/// The server-sent events of a streamed answer: (event, data).
async fn events(response: reqwest::Response) -> Vec<(String, Value)> {
    let text = response.text().await.unwrap();
    text.split("\n\n")
        .filter(|block| !block.trim().is_empty() && !block.starts_with(':'))
        .map(|block| {
            let field = |name: &str| {
                block
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or_else(|| panic!("no {name} in {block:?}"))
                    .to_string()
            };
            (
                field("event: "),
                serde_json::from_str(&field("data: ")).unwrap(),
            )
        })
        .collect()
}

#[tokio::test]
async fn a_generation_is_a_png_of_the_asked_size_and_a_seed_repeats_it() {
    let server = Server::start(&[]);
    let client = reqwest::Client::new();
    let body = json!({"prompt": "a red fox", "size": "64x48", "steps": 2, "seed": 5});
    let response = server.generate(&client, body.clone()).await;
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = response.json().await.unwrap();
    assert!(answer["created"].as_u64().unwrap() > 1_700_000_000);
    let [(png, seed)] = <[_; 1]>::try_from(pictures(&answer)).unwrap();
    assert_eq!(seed, 5);
    let (width, height, pixels, text) = decode_png(&png);
    assert_eq!((width, height), (64, 48));
    for (key, value) in [("prompt", "a red fox"), ("seed", "5"), ("steps", "2")] {
        assert!(
            text.contains(&(key.to_string(), value.to_string())),
            "{key} in {text:?}"
        );
    }

    // The same seed, the same bytes; the k-th picture of a batch is drawn from seed + k.
    let again: Value = server.generate(&client, body).await.json().await.unwrap();
    assert_eq!(pictures(&again)[0].0, png);
    let batch = json!({"prompt": "a red fox", "size": "64x48", "steps": 2, "seed": 4, "n": 2});
    let batch: Value = server.generate(&client, batch).await.json().await.unwrap();
    let batch = pictures(&batch);
    assert_eq!(batch.iter().map(|p| p.1).collect::<Vec<_>>(), [4, 5]);
    assert_eq!(batch[1].0, png);
    assert_ne!(decode_png(&batch[0].0).2, pixels);

    // The picture is the one `dit generate` draws with the same parameters.
    let size = ["--width", "64", "--height", "48"];
    let rest = ["--prompt", "a red fox", "--steps", "2", "--seed", "5"];
    assert_eq!(generated_pixels(&[&size[..], &rest].concat()), pixels);
}

/// `dit generate`'s picture (RGB pixels) for the same parameters as `serve` was given.
fn generated_pixels(args: &[&str]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("picture.png");
    let output = Command::new(env!("CARGO_BIN_EXE_dit"))
        .arg("generate")
        .args(args)
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    decode_png(&std::fs::read(&out).unwrap()).2
}

#[tokio::test]
async fn a_folder_with_a_lora_serves_what_generate_draws() {
    let fixtures = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let folder = fixtures.join("pipeline");
    let adapter = format!(
        "{}:0.7",
        fixtures.join("edit/lora_peft.safetensors").display()
    );
    let folder = folder.to_str().unwrap();
    let server = Server::start_model(folder, &["--lora", &adapter]);
    let client = reqwest::Client::new();
    let body = json!({"prompt": "a red fox", "size": "32x32", "steps": 2, "seed": 3});
    let answer: Value = server.generate(&client, body).await.json().await.unwrap();
    let (_, _, served, text) = decode_png(&pictures(&answer)[0].0);
    assert!(
        text.contains(&("loras".into(), adapter.clone())),
        "{text:?}"
    );
    let args = [
        "--model",
        folder,
        "--prompt",
        "a red fox",
        "--width",
        "32",
        "--height",
        "32",
    ];
    let seed = ["--steps", "2", "--seed", "3"];
    let with_lora = generated_pixels(&[&args[..], &seed, &["--lora", &adapter]].concat());
    assert_eq!(served, with_lora);
    assert_ne!(served, generated_pixels(&[&args[..], &seed].concat()));

    // The folder's name is the model's id; its description lists the adapter.
    let model: Value = client
        .get(server.url("/v1/models/pipeline"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(model["id"], "pipeline");
    assert_eq!(model["loras"][0]["scale"], 0.7f32 as f64);
    assert!(model["loras"][0]["layers"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn errors_have_openai_shape_and_status() {
    let server = Server::start(&["--max-size", "128"]);
    let client = reqwest::Client::new();
    let post = |body: &str| {
        client
            .post(server.url("/v1/images/generations"))
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    let cases = [
        (post("{\"prompt\": "), 400, None),
        (post("[\"a fox\"]"), 400, None),
        (post("{}"), 400, Some("prompt")),
        (post(r#"{"prompt": ["a fox"]}"#), 400, Some("prompt")),
        (post(r#"{"prompt": "a", "steps": "4"}"#), 400, Some("steps")),
        (post(r#"{"prompt": "a", "steps": 0}"#), 400, Some("steps")),
        (
            post(r#"{"prompt": "a", "size": "100x64"}"#),
            400,
            Some("size"),
        ),
        (
            post(r#"{"prompt": "a", "size": "256x64"}"#),
            400,
            Some("size"),
        ),
        (post(r#"{"prompt": "a", "size": "big"}"#), 400, Some("size")),
        (post(r#"{"prompt": "a", "n": 5}"#), 400, Some("n")),
        (post(r#"{"prompt": "a", "n": 0}"#), 400, Some("n")),
        (
            post(r#"{"prompt": "a", "style": "vivid"}"#),
            400,
            Some("style"),
        ),
        (
            post(r#"{"prompt": "a", "response_format": "url"}"#),
            400,
            Some("response_format"),
        ),
        (
            post(r#"{"prompt": "a", "guidance_scale": -2}"#),
            400,
            Some("guidance_scale"),
        ),
        (
            post(r#"{"prompt": "a", "model": "dall-e-3"}"#),
            404,
            Some("model"),
        ),
        (
            post(&format!(r#"{{"prompt": "{}"}}"#, "a".repeat(2 << 20))),
            413,
            None,
        ),
        (client.get(server.url("/v1/images/generations")), 405, None),
        (client.delete(server.url("/health")), 405, None),
        (client.get(server.url("/v1/images")), 404, None),
        (
            client.get(server.url("/v1/models/dall-e-3")),
            404,
            Some("model"),
        ),
    ];
    for (request, status, param) in cases {
        let request = request.build().unwrap();
        let what = format!("{} {}", request.method(), request.url().path());
        let response = client.execute(request).await.unwrap();
        assert_eq!(response.status().as_u16(), status, "{what}");
        let body: Value = response.json().await.unwrap();
        let error = &body["error"];
        assert!(
            error["message"].as_str().is_some_and(|m| !m.is_empty()),
            "{body}"
        );
        assert!(error["type"].is_string(), "{body}");
        assert_eq!(error["param"].as_str(), param, "{what}: {body}");
        assert!(error.as_object().unwrap().contains_key("code"), "{body}");
    }
    // Nothing above broke it.
    let ok = json!({"prompt": "a", "size": "32x32", "steps": 1});
    assert_eq!(server.generate(&client, ok).await.status(), StatusCode::OK);
}

#[tokio::test]
async fn models_and_health_describe_the_server() {
    let server = Server::start(&[]);
    let client = reqwest::Client::new();
    let get = |path: &str| client.get(server.url(path)).send();
    let models: Value = get("/v1/models").await.unwrap().json().await.unwrap();
    assert_eq!(models["object"], "list");
    assert_eq!(models["data"][0]["id"], "tiny");
    assert_eq!(models["data"][0]["object"], "model");
    let model: Value = get("/v1/models/tiny").await.unwrap().json().await.unwrap();
    assert_eq!(model["id"], "tiny");
    assert_eq!(model["architecture"], "ZImageTransformer2DModel");
    assert!(model["parameters"].as_u64().unwrap() > 0);
    assert_eq!(model["quantization"]["mode"], "none");
    assert_eq!(
        model["components"]["text_encoder"]["architecture"],
        "Qwen3Model"
    );
    let health = server.health(&client).await;
    assert_eq!(health["status"], "ok");
    assert_eq!(health["completed"], 0);
    assert!(health["baseline_bytes"].as_u64().unwrap() > 0);
}

#[tokio::test]
async fn a_stream_reports_every_step_then_the_answer() {
    let server = Server::start(&[]);
    let client = reqwest::Client::new();
    let body = json!({"prompt": "a fox", "size": "32x32", "steps": 3, "n": 2, "seed": 9,
                      "stream": true});
    let response = server.generate(&client, body).await;
    assert_eq!(response.status(), StatusCode::OK);
    let content_type = response.headers()["content-type"].to_str().unwrap();
    assert!(
        content_type.starts_with("text/event-stream"),
        "{content_type}"
    );
    let events = events(response).await;
    let (last, progress) = events.split_last().unwrap();
    let steps: Vec<(u64, u64)> = progress
        .iter()
        .map(|(name, data)| {
            assert_eq!(name, "progress");
            (
                data["step"].as_u64().unwrap(),
                data["total"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(steps, (1..=6).map(|s| (s, 6)).collect::<Vec<_>>());
    assert_eq!(last.0, "done");
    let streamed = pictures(&last.1);
    assert_eq!(streamed.len(), 2);

    // The same pictures as without streaming.
    let plain = json!({"prompt": "a fox", "size": "32x32", "steps": 3, "n": 2, "seed": 9});
    let plain: Value = server.generate(&client, plain).await.json().await.unwrap();
    assert_eq!(pictures(&plain), streamed);
}

#[tokio::test]
async fn a_client_that_goes_away_cancels_its_generation() {
    let server = Server::start(&["--max-steps", "10000"]);
    let client = reqwest::Client::new();
    // Each new picture size adds its compiled graphs (a few KB of constants) to MLX's
    // compile cache: the baseline is taken once both sizes below have run.
    let small = json!({"prompt": "a fox", "size": "32x32", "steps": 2, "seed": 1});
    let warm = json!({"prompt": "a fox", "size": "64x64", "steps": 1});
    let first: Value = server
        .generate(&client, small.clone())
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        server.generate(&client, warm.clone()).await.status(),
        StatusCode::OK
    );
    let baseline = server.health(&client).await["active_bytes"].clone();
    let long = |stream: bool| json!({"prompt": "a fox", "size": "64x64", "steps": 10000, "stream": stream});

    // A stream dropped after its first event.
    let mut response = server.generate(&client, long(true)).await;
    let chunk = response.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&chunk).contains("event: progress"));
    drop(response);
    server
        .wait_for(&client, |h| h["cancelled"] == 1 && h["running"] == false)
        .await;

    // A plain request whose client gives up.
    let gave_up = client
        .post(server.url("/v1/images/generations"))
        .json(&long(false))
        .timeout(Duration::from_millis(500))
        .send()
        .await;
    assert!(gave_up.unwrap_err().is_timeout());
    server
        .wait_for(&client, |h| h["cancelled"] == 2 && h["running"] == false)
        .await;

    // A request that gives up while waiting never runs.
    let mut running = server.generate(&client, long(true)).await;
    running.chunk().await.unwrap().unwrap();
    let gave_up = client
        .post(server.url("/v1/images/generations"))
        .json(&json!({"prompt": "a fox", "size": "32x32", "steps": 1}))
        .timeout(Duration::from_millis(300))
        .send()
        .await;
    assert!(gave_up.unwrap_err().is_timeout());
    drop(running);
    let health = server
        .wait_for(&client, |h| h["cancelled"] == 4 && h["running"] == false)
        .await;
    assert_eq!(health["completed"], 2, "{health}");

    // The next request runs, and memory is where it was.
    assert_eq!(
        server.generate(&client, warm).await.status(),
        StatusCode::OK
    );
    let again: Value = server.generate(&client, small).await.json().await.unwrap();
    assert_eq!(pictures(&again), pictures(&first));
    let health = server.health(&client).await;
    assert_eq!(health["completed"], 4);
    assert_eq!(health["active_bytes"], baseline, "{health}");
    let log = server.log.lock().unwrap().clone();
    assert_eq!(log.matches("status=499").count(), 4, "{log}");
}

#[tokio::test]
async fn a_full_queue_answers_429_and_nothing_fails() {
    let server = Server::start(&["--queue", "8"]);
    let client = reqwest::Client::new();
    let body = json!({"prompt": "a fox", "size": "64x64", "steps": 6});
    let answers = join_all((0..32).map(|_| async {
        let response = server.generate(&client, body.clone()).await;
        let status = response.status();
        (status, response.json::<Value>().await.unwrap())
    }))
    .await;
    let ok: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::OK)
        .map(|(_, body)| body)
        .collect();
    let busy: Vec<&Value> = answers
        .iter()
        .filter(|(s, _)| *s == StatusCode::TOO_MANY_REQUESTS)
        .map(|(_, body)| body)
        .collect();
    assert_eq!(ok.len() + busy.len(), 32, "{answers:?}");
    // One runs and eight wait; others may get in as places free up.
    assert!(ok.len() >= 8, "{} accepted", ok.len());
    assert!(!busy.is_empty());
    for body in ok {
        let (w, h, _, _) = decode_png(&pictures(body)[0].0);
        assert_eq!((w, h), (64, 64));
    }
    for body in busy {
        assert_eq!(body["error"]["code"], "queue_full");
    }
    let health = server.health(&client).await;
    assert_eq!(
        health["rejected"].as_u64().unwrap() as usize,
        32 - health["completed"].as_u64().unwrap() as usize
    );
}

#[tokio::test]
async fn shutdown_finishes_the_running_request_and_answers_the_queued_with_503() {
    let mut server = Server::start(&["--queue", "4"]);
    let client = reqwest::Client::new();
    let running = json!({"prompt": "a fox", "size": "64x64", "steps": 60, "stream": true});
    let mut stream = server.generate(&client, running).await;
    let first = stream.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("event: progress"));
    let queued = json!({"prompt": "a fox", "size": "32x32", "steps": 1});
    let waiting: Vec<_> = (0..3)
        .map(|_| {
            let request = client
                .post(server.url("/v1/images/generations"))
                .json(&queued)
                .send();
            tokio::spawn(request)
        })
        .collect();
    server.wait_for(&client, |h| h["queued"] == 3).await;

    let status = tokio::task::spawn_blocking(move || {
        let status = server.terminate();
        (server, status)
    });
    let mut rest = String::from_utf8_lossy(&first).into_owned();
    while let Some(chunk) = stream.chunk().await.unwrap() {
        rest.push_str(&String::from_utf8_lossy(&chunk));
    }
    assert_eq!(rest.matches("event: progress").count(), 60, "{rest}");
    assert!(rest.contains("event: done"), "{rest}");
    for request in waiting {
        let response = request.await.unwrap().unwrap();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "shutting_down");
    }
    let (server, status) = status.await.unwrap();
    assert!(status.success(), "{status:?}");
    // Nobody is listening any more.
    let after = reqwest::Client::new()
        .get(server.url("/health"))
        .send()
        .await;
    assert!(after.is_err());
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let mut server = Server::start(&["--max-steps", "10000"]);
    let client = reqwest::Client::new();
    let long = json!({"prompt": "a fox", "size": "64x64", "steps": 10000, "stream": true});
    let mut stream = server.generate(&client, long).await;
    stream.chunk().await.unwrap().unwrap();
    server.signal();
    // Signals arriving together may be delivered as one: the second waits for the first.
    let started = Instant::now();
    while !server.log.lock().unwrap().contains("shutting down") {
        assert!(started.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(10));
    }
    server.signal();
    let started = Instant::now();
    let status = tokio::task::spawn_blocking(move || server.wait())
        .await
        .unwrap();
    assert_eq!(status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(10));
}

#[tokio::test]
async fn each_request_is_one_log_line() {
    let server = Server::start(&[]);
    let client = reqwest::Client::new();
    let body = json!({"prompt": "a fox", "size": "32x48", "steps": 2});
    assert_eq!(
        server.generate(&client, body).await.status(),
        StatusCode::OK
    );
    let bad = json!({"prompt": "a fox", "n": 9});
    assert_eq!(
        server.generate(&client, bad).await.status(),
        StatusCode::BAD_REQUEST
    );
    let started = Instant::now();
    let log = loop {
        let log = server.log.lock().unwrap().clone();
        if log.matches(" request ").count() >= 2 || started.elapsed() > Duration::from_secs(5) {
            break log;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(" request ")).collect();
    assert_eq!(lines.len(), 2, "{log}");
    for field in [
        "id=1",
        "size=\"32x48\"",
        "steps=2",
        "wait_ms=",
        "time_ms=",
        "status=200",
    ] {
        assert!(lines[0].contains(field), "{field} in {}", lines[0]);
    }
    assert!(lines[1].contains("status=400"), "{}", lines[1]);
}

#[test]
fn bad_flags_are_one_line_errors() {
    for (args, flag) in [
        (&["--queue", "0"][..], "--queue"),
        (&["--max-steps", "0"][..], "--max-steps"),
        (&["--max-size", "1000"][..], "--max-size"),
        (&["--host", "no.such.host.invalid"][..], "--host"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_dit"))
            .args(["serve", "--port", "0"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
        assert_eq!(error.len(), 1, "{stderr}");
        assert!(error[0].contains(flag), "{stderr}");
        assert!(output.stdout.is_empty());
    }
}
