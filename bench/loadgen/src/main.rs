//! An open-loop load generator: sends requests at a fixed rate, whatever the server's answers, and measures
//! each latency from the moment the request was due.
//!
//! wrk is closed-loop: each connection waits for an answer before it sends again, so a slow server is sent
//! less and its queueing never shows in the percentiles ("coordinated omission"). Asking "what does the
//! pipeline add at half the peak load" needs a fixed arrival rate. A dispatcher thread sleeps until each
//! request is due (std's sleep, tens of microseconds late at most; tokio's timer has millisecond ticks) and
//! hands it to a small runtime that sends it on a pooled keep-alive connection (opened as needed, so a
//! slow answer never delays the next request). Prints one JSON line with the percentiles.
//!
//! Usage: loadgen --url URL --rate 3000 --seconds 5 [--method POST --body-file F] [--header 'Name: value']...

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Parser;

#[derive(Parser, Debug)]
struct Args {
    #[arg(long)]
    url: String,
    /// Requests per second.
    #[arg(long)]
    rate: f64,
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    #[arg(long, default_value = "GET")]
    method: String,
    /// A file whose bytes are sent as the body (with `Content-Type: application/json`).
    #[arg(long)]
    body_file: Option<std::path::PathBuf>,
    /// An extra request header, `Name: value`; repeatable.
    #[arg(long = "header")]
    headers: Vec<String>,
    /// Seconds of load before measuring starts (connections opened, caches warm); not counted.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
}

/// One answered request: latency from when it was due, how late it was sent, whether it was a 2xx.
struct Sample {
    latency: Duration,
    send_lag: Duration,
    ok: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let mut headers = reqwest::header::HeaderMap::new();
    for header in &args.headers {
        let (name, value) =
            header.split_once(':').ok_or_else(|| format!("--header {header:?} is not `Name: value`"))?;
        headers.insert(reqwest::header::HeaderName::try_from(name.trim())?, value.trim().parse()?);
    }
    let body = match &args.body_file {
        Some(path) => {
            headers.insert(reqwest::header::CONTENT_TYPE, "application/json".parse()?);
            Some(std::fs::read(path)?)
        }
        None => None,
    };
    let method = reqwest::Method::from_bytes(args.method.as_bytes())?;
    let client = reqwest::Client::builder().default_headers(headers).build()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;

    let period = Duration::from_secs_f64(1.0 / args.rate);
    let warmup = (args.warmup * args.rate) as u64;
    let total = warmup + (args.seconds * args.rate) as u64;
    let samples = Arc::new(Mutex::new(Vec::with_capacity(total as usize)));
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let start = Instant::now() + Duration::from_millis(20);
    for n in 0..total {
        let due = start + period.mul_f64(n as f64);
        if let Some(wait) = due.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
        let (client, method, url, body) = (client.clone(), method.clone(), args.url.clone(), body.clone());
        let (samples, done_tx) = (samples.clone(), done_tx.clone());
        runtime.spawn(async move {
            let send_lag = Instant::now().saturating_duration_since(due);
            let mut request = client.request(method, url);
            if let Some(body) = body {
                request = request.body(body);
            }
            let ok = match request.send().await {
                Ok(response) => {
                    let ok = response.status().is_success();
                    ok && response.bytes().await.is_ok()
                }
                Err(_) => false,
            };
            if n >= warmup {
                let sample = Sample { latency: due.elapsed(), send_lag, ok };
                samples.lock().expect("samples lock").push(sample);
            }
            drop(done_tx);
        });
    }
    drop(done_tx);
    let sent_for = start.elapsed();
    // Every request answers or times out (reqwest's default has no timeout; the server answers or closes).
    let _ = done_rx.recv();
    runtime.shutdown_timeout(Duration::from_secs(1));

    let samples = std::mem::take(&mut *samples.lock().expect("samples lock"));
    let errors = samples.iter().filter(|s| !s.ok).count();
    let mut latency: Vec<u64> = samples.iter().map(|s| s.latency.as_micros() as u64).collect();
    let mut lag: Vec<u64> = samples.iter().map(|s| s.send_lag.as_micros() as u64).collect();
    latency.sort_unstable();
    lag.sort_unstable();
    let pct = |v: &[u64], p: f64| {
        v.get(((v.len() as f64 * p / 100.0).ceil() as usize).saturating_sub(1)).copied().unwrap_or(0)
    };
    let out = serde_json::json!({
        "rate": args.rate,
        "achieved_rate": total as f64 / sent_for.as_secs_f64(),
        "requests": samples.len(),
        "errors": errors,
        "p50_us": pct(&latency, 50.0),
        "p90_us": pct(&latency, 90.0),
        "p99_us": pct(&latency, 99.0),
        "p999_us": pct(&latency, 99.9),
        "max_us": latency.last().copied().unwrap_or(0),
        "send_lag_p99_us": pct(&lag, 99.0),
    });
    println!("{out}");
    Ok(())
}
