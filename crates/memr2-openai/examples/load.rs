//! A load generator for an OpenAI-compatible server: N concurrent clients, each sending chat
//! completions one after another, greedy, with a fixed `max_tokens`; prints completion tokens
//! per second, requests per second and the p50 / p99 latency for each client count.
//!
//! ```sh
//! cargo run --release -p memr2-openai --example load -- \
//!     --url http://127.0.0.1:8080/v1 --model memr2-answerer --clients 1,8,32 --requests 64
//! ```

use std::time::{Duration, Instant};

use memr2_openai::wire::{ChatMessage, ChatRequest, ChatResponse};

struct Args {
    url: String,
    model: String,
    clients: Vec<usize>,
    requests: usize,
    max_tokens: u32,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        url: "http://127.0.0.1:8080/v1".into(),
        model: "memr2-answerer".into(),
        clients: vec![1, 8, 32],
        requests: 64,
        max_tokens: 32,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let value = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = |v: &str| v.parse::<usize>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--url" => args.url = value.trim_end_matches('/').to_string(),
            "--model" => args.model = value,
            "--clients" => args.clients = value.split(',').map(number).collect::<Result<_, _>>()?,
            "--requests" => args.requests = number(&value)?,
            "--max-tokens" => args.max_tokens = number(&value)? as u32,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(args)
}

/// The i-th request: an answerer-style prompt over a few memories, different per request.
fn request(args: &Args, i: usize) -> ChatRequest {
    let memories: Vec<String> = (0..8)
        .map(|m| {
            format!(
                "- [2023-0{}-1{}] Person {} moved to city {} and works as job {}.",
                1 + m % 9,
                m,
                i % 17,
                (i + m) % 23,
                (i * 7 + m) % 13
            )
        })
        .collect();
    ChatRequest {
        max_tokens: Some(args.max_tokens),
        temperature: Some(0.0),
        ..ChatRequest::new(
            args.model.clone(),
            vec![
                ChatMessage::new(
                    "system",
                    "Answer the question from the memories in a few words. Reply as JSON {\"answer\": \"...\"}.",
                ),
                ChatMessage::new(
                    "user",
                    format!(
                        "Memories:\n{}\nQuestion: Where does person {} live now?",
                        memories.join("\n"),
                        i % 17
                    ),
                ),
            ],
        )
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn main() -> Result<(), String> {
    let args = parse()?;
    let agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(600)))
        .build()
        .new_agent();
    let url = format!("{}/chat/completions", args.url);
    println!(
        "| clients | requests | completion tokens/s | requests/s | p50 latency (ms) | p99 latency (ms) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for &clients in &args.clients {
        let started = Instant::now();
        let per_client = args.requests.div_ceil(clients);
        let results: Vec<Result<Vec<(Duration, u64)>, String>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..clients)
                .map(|c| {
                    let (agent, url, args) = (agent.clone(), &url, &args);
                    scope.spawn(move || {
                        let mut out = Vec::new();
                        for k in 0..per_client {
                            let body = serde_json::to_string(&request(args, c * per_client + k))
                                .expect("serialises");
                            let sent = Instant::now();
                            let text = agent
                                .post(url)
                                .header("Content-Type", "application/json")
                                .send(&body)
                                .map_err(|e| e.to_string())?
                                .into_body()
                                .read_to_string()
                                .map_err(|e| e.to_string())?;
                            let response: ChatResponse =
                                serde_json::from_str(&text).map_err(|e| format!("{e}: {text}"))?;
                            let tokens = response.usage.map_or(0, |u| u.completion_tokens);
                            out.push((sent.elapsed(), tokens));
                        }
                        Ok(out)
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| h.join().expect("client thread"))
                .collect()
        });
        let wall = started.elapsed().as_secs_f64();
        let mut latencies = Vec::new();
        let mut tokens = 0;
        for r in results {
            for (latency, t) in r? {
                latencies.push(latency);
                tokens += t;
            }
        }
        latencies.sort();
        println!(
            "| {clients} | {} | {:.0} | {:.2} | {:.0} | {:.0} |",
            latencies.len(),
            tokens as f64 / wall,
            latencies.len() as f64 / wall,
            percentile(&latencies, 0.5).as_secs_f64() * 1e3,
            percentile(&latencies, 0.99).as_secs_f64() * 1e3
        );
    }
    Ok(())
}
