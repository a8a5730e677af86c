//! `GET /metrics`: Prometheus text exposition of the server's and the engine's
//! counters (requests, responses by status, tokens, throughput, queue depth, batch
//! size), for whoever watches a deployment.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use super::AppState;

/// Request counts and latencies by endpoint, responses by status code.
#[derive(Debug, Default)]
pub struct Metrics {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// endpoint → (count, seconds)
    requests: BTreeMap<&'static str, (u64, f64)>,
    statuses: BTreeMap<u16, u64>,
}

impl Metrics {
    pub fn record_request(&self, endpoint: &'static str, took: Duration) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.requests.entry(endpoint).or_default();
        e.0 += 1;
        e.1 += took.as_secs_f64();
    }

    pub fn record_status(&self, status: u16) {
        let mut m = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        *m.statuses.entry(status).or_default() += 1;
    }
}

pub async fn render(State(st): State<Arc<AppState>>) -> impl IntoResponse {
    let mut out = String::new();
    let s = st.scheduler.stats();
    let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
    {
        let m = st.metrics.inner.lock().unwrap_or_else(|p| p.into_inner());
        out.push_str("# HELP pathos_requests_total Requests handled, by endpoint.\n# TYPE pathos_requests_total counter\n");
        for (e, (n, _)) in &m.requests {
            let _ = writeln!(out, "pathos_requests_total{{endpoint=\"{e}\"}} {n}");
        }
        out.push_str("# HELP pathos_request_seconds Time spent answering requests, by endpoint.\n# TYPE pathos_request_seconds summary\n");
        for (e, (n, secs)) in &m.requests {
            let _ = writeln!(out, "pathos_request_seconds_sum{{endpoint=\"{e}\"}} {secs:.6}");
            let _ = writeln!(out, "pathos_request_seconds_count{{endpoint=\"{e}\"}} {n}");
        }
        out.push_str("# HELP pathos_responses_total HTTP responses, by status code.\n# TYPE pathos_responses_total counter\n");
        for (code, n) in &m.statuses {
            let _ = writeln!(out, "pathos_responses_total{{code=\"{code}\"}} {n}");
        }
    }
    let busy = load(&s.busy_us) as f64 / 1e6;
    let generated = load(&s.generated_tokens);
    let steps = load(&s.steps);
    let counters = [
        ("pathos_admitted_total", "Generation requests admitted into a batch.", load(&s.admitted)),
        ("pathos_rejected_total", "Requests refused because the queue was full (429).", load(&s.rejected)),
        ("pathos_cancelled_total", "Generations ended because the client went away.", load(&s.cancelled)),
        ("pathos_prompt_tokens_total", "Prompt tokens of finished generations.", load(&s.prompt_tokens)),
        ("pathos_generated_tokens_total", "Tokens generated.", generated),
        ("pathos_forward_passes_total", "Batched forward passes run.", steps),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
    }
    let gauges = [
        ("pathos_queue_depth", "Requests waiting for a place in the batch.", s.waiting.load(Ordering::Relaxed) as f64),
        ("pathos_batch_size", "Sequences in the running batch now.", s.running.load(Ordering::Relaxed) as f64),
        (
            "pathos_batch_size_mean",
            "Mean sequences per forward pass since start.",
            if steps > 0 { load(&s.step_rows) as f64 / steps as f64 } else { 0.0 },
        ),
        ("pathos_engine_busy_seconds", "Time the engine spent in forward passes and sampling.", busy),
        (
            "pathos_tokens_per_second",
            "Generated tokens per second of engine busy time since start.",
            if busy > 0.0 { generated as f64 / busy } else { 0.0 },
        ),
        ("pathos_uptime_seconds", "Seconds since the server started.", st.started.elapsed().as_secs_f64()),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")],
        out,
    )
}
