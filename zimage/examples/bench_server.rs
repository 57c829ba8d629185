//! Load benchmark of `dit serve`: N concurrent clients send generations until R requests
//! are answered; reports throughput, latency percentiles, and the server's active memory
//! (from `/health`) after the 1st, 100th and 1,000th answer and at the end.
//!
//! ```text
//! cargo build --release -p zimage --bin dit --example bench_server
//! target/release/examples/bench_server --clients 4 --requests 1000 --size 64x64 --steps 2
//! target/release/examples/bench_server --url http://127.0.0.1:8080 ...   # a running server
//! ```
//!
//! Without `--url` it starts `dit serve --model M --port 0` from the same target directory.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

struct Options {
    url: Option<String>,
    model: String,
    clients: usize,
    requests: usize,
    size: String,
    steps: usize,
}

fn options() -> Result<Options, String> {
    let mut options = Options {
        url: None,
        model: "tiny".into(),
        clients: 4,
        requests: 1000,
        size: "64x64".into(),
        steps: 2,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = || args.next().ok_or(format!("{flag} needs a value"));
        let number = |v: String| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--url" => options.url = Some(value()?),
            "--model" => options.model = value()?,
            "--clients" => options.clients = number(value()?)?.max(1),
            "--requests" => options.requests = number(value()?)?.max(1),
            "--size" => options.size = value()?,
            "--steps" => options.steps = number(value()?)?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(options)
}

/// `dit serve` from the target directory this example was built into.
fn start_server(model: &str, queue: usize) -> Result<(Child, String), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let dit: PathBuf = exe
        .parent()
        .and_then(|examples| examples.parent())
        .map(|dir| dir.join("dit"))
        .ok_or("no target directory")?;
    let mut child = Command::new(&dit)
        .args(["serve", "--model", model, "--port", "0", "--queue"])
        .arg(queue.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!(
                "{}: {e} (build it with `cargo build --release -p zimage --bin dit`)",
                dit.display()
            )
        })?;
    let mut line = String::new();
    let stdout = child.stdout.take().ok_or("no stdout")?;
    BufReader::new(stdout)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    let url = line
        .trim()
        .strip_prefix("listening on ")
        .ok_or(format!("dit serve said {line:?}"))?
        .to_string();
    Ok((child, url))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), String> {
    let options = options()?;
    let (mut server, url) = match &options.url {
        Some(url) => (None, url.clone()),
        None => {
            let (child, url) = start_server(&options.model, options.clients)?;
            (Some(child), url)
        }
    };
    let client = reqwest::Client::new();
    let body =
        json!({"prompt": "a red fox in the snow", "size": options.size, "steps": options.steps});
    let health = |client: reqwest::Client| {
        let url = format!("{url}/health");
        async move {
            let health: Value = client.get(url).send().await.ok()?.json().await.ok()?;
            Some(health)
        }
    };
    let before = health(client.clone()).await.ok_or("no /health")?;

    let sent = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(options.requests)));
    let statuses = Arc::new(Mutex::new(std::collections::BTreeMap::<u16, usize>::new()));
    let memory = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let clients = (0..options.clients).map(|_| {
        let (client, body, url) = (client.clone(), body.clone(), url.clone());
        let (sent, latencies, statuses, memory) = (
            Arc::clone(&sent),
            Arc::clone(&latencies),
            Arc::clone(&statuses),
            Arc::clone(&memory),
        );
        let requests = options.requests;
        async move {
            while sent.fetch_add(1, Ordering::Relaxed) < requests {
                let t = Instant::now();
                let response = client
                    .post(format!("{url}/v1/images/generations"))
                    .json(&body)
                    .send()
                    .await;
                let status = match response {
                    Ok(r) => {
                        let status = r.status().as_u16();
                        let _ = r.bytes().await;
                        status
                    }
                    Err(_) => 0,
                };
                let elapsed = t.elapsed();
                let answered = {
                    let mut latencies = latencies.lock().unwrap();
                    latencies.push(elapsed);
                    latencies.len()
                };
                *statuses.lock().unwrap().entry(status).or_default() += 1;
                if [1, 100, 1000].contains(&answered) || answered == requests {
                    if let Some(h) = health(client.clone()).await {
                        memory.lock().unwrap().push((answered, h));
                    }
                }
            }
        }
    });
    futures_util::future::join_all(clients).await;
    let wall = started.elapsed();
    let mut latencies = latencies.lock().unwrap().clone();
    latencies.sort();
    let percentile = |p: f64| {
        let i = ((latencies.len() as f64 - 1.0) * p).round() as usize;
        latencies[i].as_secs_f64() * 1e3
    };
    let answered = latencies.len();
    let mut memory = memory.lock().unwrap().clone();
    memory.sort_by_key(|(n, _)| *n);
    memory.dedup_by_key(|(n, _)| *n);
    let mib = |v: &Value| v.as_f64().unwrap_or(0.0) / (1024.0 * 1024.0);
    println!(
        "{answered} requests ({} {} steps) from {} clients in {:.1} s: {:.2} requests/s",
        options.size,
        options.steps,
        options.clients,
        wall.as_secs_f64(),
        answered as f64 / wall.as_secs_f64()
    );
    println!(
        "latency ms: p50 {:.1}, p90 {:.1}, p99 {:.1}, max {:.1}; statuses {:?}",
        percentile(0.5),
        percentile(0.9),
        percentile(0.99),
        percentile(1.0),
        statuses.lock().unwrap()
    );
    println!(
        "active memory MiB: loaded {:.3}; {}",
        mib(&before["active_bytes"]),
        memory
            .iter()
            .map(|(n, h)| format!("after {n}: {:.3}", mib(&h["active_bytes"])))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let report = json!({
        "requests": answered,
        "clients": options.clients,
        "size": options.size,
        "steps": options.steps,
        "seconds": wall.as_secs_f64(),
        "requests_per_s": answered as f64 / wall.as_secs_f64(),
        "latency_ms": {"p50": percentile(0.5), "p90": percentile(0.9), "p99": percentile(0.99), "max": percentile(1.0)},
        "statuses": *statuses.lock().unwrap(),
        "active_bytes_loaded": before["active_bytes"],
        "active_bytes_after": memory.iter().map(|(n, h)| json!({"answered": n, "active_bytes": h["active_bytes"], "completed": h["completed"]})).collect::<Vec<_>>(),
    });
    println!("{report}");
    if let Some(server) = &mut server {
        let _ = Command::new("kill")
            .args(["-TERM", &server.id().to_string()])
            .status();
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            while server.try_wait().ok().flatten().is_none() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        let _ = server.kill();
    }
    Ok(())
}
