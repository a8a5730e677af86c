//! `pathos serve` on the real default model, driven over HTTP as clients would: the
//! OpenAI endpoints whole and streamed, errors for bad requests, the queue bound, the
//! API key, cancellation by disconnect, a slow client, the rewrite stream, the remote
//! backend through a pathos server, the `openai` Python package and `curl -N`.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// A running `pathos serve` on a free loopback port, killed when dropped.
struct Server {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
    dir: PathBuf,
}

impl Server {
    fn start(extra: &[&str]) -> Self {
        common::model_path("smollm2-135m");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().to_path_buf();
        Self::start_in(dir, path, extra)
    }

    fn start_in(keep: tempfile::TempDir, dir: PathBuf, extra: &[&str]) -> Self {
        let mut child = common::pathos_cmd(&["serve", "--port", "0"])
            .args([
                "--transcript-dir",
                dir.join("transcripts").to_str().unwrap(),
            ])
            .args(extra)
            .env("PATHOS_JOURNAL", dir.join("journal"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting pathos serve");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .trim()
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .to_string();
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "default bind is loopback: {url}"
        );
        Self {
            child,
            url,
            _dir: keep,
            dir,
        }
    }

    fn post(&self, path: &str, body: &Value) -> (u16, Value) {
        self.post_raw(path, &body.to_string(), None)
    }

    fn post_raw(&self, path: &str, body: &str, key: Option<&str>) -> (u16, Value) {
        let mut r =
            ureq::post(&format!("{}{path}", self.url)).set("content-type", "application/json");
        if let Some(k) = key {
            r = r.set("authorization", &format!("Bearer {k}"));
        }
        answer(r.send_string(body))
    }

    fn get(&self, path: &str, key: Option<&str>) -> (u16, Value) {
        let mut r = ureq::get(&format!("{}{path}", self.url));
        if let Some(k) = key {
            r = r.set("authorization", &format!("Bearer {k}"));
        }
        answer(r.call())
    }

    fn metric(&self, name: &str) -> f64 {
        let text = ureq::get(&format!("{}/metrics", self.url))
            .call()
            .unwrap()
            .into_string()
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(&format!("{name} ")))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or_else(|| panic!("no metric {name} in:\n{text}"))
    }

    fn addr(&self) -> String {
        self.url.trim_start_matches("http://").to_string()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn answer(r: Result<ureq::Response, ureq::Error>) -> (u16, Value) {
    let res = match r {
        Ok(res) => res,
        Err(ureq::Error::Status(_, res)) => res,
        Err(e) => panic!("transport error: {e}"),
    };
    let status = res.status();
    let text = res.into_string().unwrap();
    let v = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("status {status}: body is not JSON ({e}): {text}"));
    (status, v)
}

/// Reads an SSE body into its `data:` payloads (with the event name, if any).
fn sse_events(body: impl Read) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut event = String::from("message");
    for line in BufReader::new(body).lines() {
        let line = line.unwrap();
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            out.push((
                std::mem::replace(&mut event, "message".into()),
                d.to_string(),
            ));
        }
    }
    out
}

fn chat_body(content: &str, extra: Value) -> Value {
    let mut b = json!({
        "model": "smollm2-135m",
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 24,
        "temperature": 0,
        "seed": 3,
    });
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b
}

#[test]
fn openai_endpoints_answer_whole_and_streamed() {
    let s = Server::start(&[]);
    let (code, health) = s.get("/health", None);
    assert_eq!((code, health["status"].as_str()), (200, Some("ok")));
    let (code, models) = s.get("/v1/models", None);
    assert_eq!(code, 200);
    assert_eq!(models["data"][0]["id"], "smollm2-135m");

    // Whole, with log-probabilities.
    let body = chat_body(
        "Name three colours.",
        json!({"logprobs": true, "top_logprobs": 3}),
    );
    let (code, v) = s.post("/v1/chat/completions", &body);
    assert_eq!(code, 200, "{v}");
    let text = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!text.is_empty());
    let usage = &v["usage"];
    let n = usage["completion_tokens"].as_u64().unwrap();
    assert!(n > 0 && n <= 24);
    assert_eq!(
        usage["total_tokens"].as_u64().unwrap(),
        n + usage["prompt_tokens"].as_u64().unwrap()
    );
    let lps = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(lps.len() as u64, n);
    for lp in lps {
        let top = lp["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 3);
        // Greedy: the chosen token is the likeliest one.
        assert!(
            (lp["logprob"].as_f64().unwrap() - top[0]["logprob"].as_f64().unwrap()).abs() < 1e-4
        );
        assert!(lp["logprob"].as_f64().unwrap() <= 0.0);
    }

    // Streamed: the same greedy text, in chunks, then usage and [DONE].
    let mut stream_body = body.clone();
    stream_body["stream"] = json!(true);
    stream_body["stream_options"] = json!({"include_usage": true});
    let res = ureq::post(&format!("{}/v1/chat/completions", s.url))
        .send_json(stream_body)
        .unwrap();
    assert!(res.content_type().starts_with("text/event-stream"));
    let events = sse_events(res.into_reader());
    assert_eq!(events.last().unwrap().1, "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|(_, d)| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, text);
    assert!(
        chunks
            .iter()
            .any(|c| c["choices"][0]["finish_reason"].is_string())
    );
    assert_eq!(
        chunks.last().unwrap()["usage"]["completion_tokens"].as_u64(),
        Some(n)
    );

    // Completions: a raw prompt, no template.
    let (code, v) = s.post(
        "/v1/completions",
        &json!({"prompt": "The capital of France is", "max_tokens": 5, "temperature": 0, "logprobs": 2}),
    );
    assert_eq!(code, 200, "{v}");
    assert_eq!(v["object"], "text_completion");
    assert_eq!(
        v["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .len(),
        5
    );

    // response_format: the reply parses as JSON of the asked shape.
    let schema = json!({"type": "object", "properties": {"colour": {"type": "string"}, "count": {"type": "integer"}}, "required": ["colour", "count"]});
    let (code, v) = s.post(
        "/v1/chat/completions",
        &chat_body(
            "Give a colour and a count as JSON.",
            json!({"max_tokens": 60, "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}}),
        ),
    );
    assert_eq!(code, 200, "{v}");
    let answer: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap())
            .expect("the reply is JSON");
    assert!(
        answer["colour"].is_string() && answer["count"].is_i64(),
        "{answer}"
    );
    let (code, v) = s.post(
        "/v1/chat/completions",
        &chat_body(
            "Give a JSON object with a cat's name and age.",
            json!({"max_tokens": 100, "response_format": {"type": "json_object"}}),
        ),
    );
    assert_eq!(code, 200, "{v}");
    let answer: Value =
        serde_json::from_str(v["choices"][0]["message"]["content"].as_str().unwrap())
            .expect("the reply is JSON");
    assert!(answer.is_object());
}

#[test]
fn bad_requests_get_a_4xx_with_an_openai_error_body() {
    let s = Server::start(&["--body-limit", "200000"]);
    let long = "word ".repeat(30_000);
    let cases: Vec<(&str, String, u16)> = vec![
        ("/v1/chat/completions", String::new(), 400),
        ("/v1/chat/completions", "{".into(), 400),
        ("/v1/chat/completions", "null".into(), 400),
        ("/v1/chat/completions", r#"{"messages":"hi"}"#.into(), 400),
        ("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"hi"}],"max_tokens":-1}"#.into(), 400),
        ("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"hi"}],"temperature":"hot"}"#.into(), 400),
        ("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"hi"}],"model":"gpt-9"}"#.into(), 404),
        ("/v1/chat/completions", r#"{"messages":[{"role":"user","content":"hi"}],"response_format":{"type":"json_schema","json_schema":{"schema":{"type":"wat"}}}}"#.into(), 400),
        ("/v1/chat/completions", json!({"messages":[{"role":"user","content": long}]}).to_string(), 400),
        ("/v1/completions", r#"{"prompt":["a","b"]}"#.into(), 400),
        ("/v1/pathos/rewrite", r#"{"text":"hi","target":"glee-ish"}"#.into(), 400),
        ("/v1/pathos/detect", r#"{"text":"  "}"#.into(), 400),
        ("/v1/nothing", "{}".into(), 404),
    ];
    for (path, body, want) in cases {
        let (code, v) = s.post_raw(path, &body, None);
        let shown: String = body.chars().take(80).collect();
        assert_eq!(code, want, "{path} {shown}: {v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{path} {shown}: {v}"
        );
        assert!(v["error"]["type"].is_string(), "{v}");
    }
    // An over-limit body is refused from its declared length, before it is sent: a
    // client still writing 300 KB when the answer comes would see a broken pipe.
    let (code, v) = declared_length_only(&s.addr(), "/v1/chat/completions", 300_000);
    assert_eq!(code, 413, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("200000")),
        "{v}"
    );
    let (code, v) = s.get("/v1/chat/completions", None);
    assert_eq!(code, 405, "{v}");
    assert!(v["error"]["message"].is_string());
    // The server is still fine after all that.
    let (code, _) = s.post(
        "/v1/chat/completions",
        &chat_body("hi", json!({"max_tokens": 2})),
    );
    assert_eq!(code, 200);
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let s = Server::start(&["--queue-limit", "0"]);
    let res =
        ureq::post(&format!("{}/v1/chat/completions", s.url)).send_json(chat_body("hi", json!({})));
    match res {
        Err(ureq::Error::Status(429, r)) => {
            assert!(r.header("retry-after").is_some());
            let v: Value = r.into_json().unwrap();
            assert_eq!(v["error"]["type"], "rate_limit_error");
        }
        other => panic!("expected 429, got {other:?}"),
    }
    assert!(s.metric("pathos_rejected_total") >= 1.0);
}

#[test]
fn an_open_address_needs_an_api_key_and_the_key_is_checked() {
    let out = common::pathos(&["serve", "--host", "0.0.0.0", "--port", "0"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--api-key"), "{err}");

    let s = Server::start(&["--api-key", "s3cret"]);
    let (code, v) = s.get("/v1/models", None);
    assert_eq!(code, 401, "{v}");
    assert_eq!(v["error"]["type"], "authentication_error");
    let (code, _) = s.get("/v1/models", Some("wrong"));
    assert_eq!(code, 401);
    let (code, _) = s.get("/v1/models", Some("s3cret"));
    assert_eq!(code, 200);
    let (code, _) = s.post_raw(
        "/v1/chat/completions",
        &chat_body("hi", json!({"max_tokens": 2})).to_string(),
        Some("s3cret"),
    );
    assert_eq!(code, 200);
    let (code, _) = s.get("/health", None);
    assert_eq!(code, 200, "health stays open for probes");
}

/// Sends the head of a POST whose body would be `len` bytes, and none of the body, on a
/// raw socket; returns the answer's status and JSON body.
fn declared_length_only(addr: &str, path: &str, len: usize) -> (u16, Value) {
    let mut sock = TcpStream::connect(addr).unwrap();
    write!(
        sock,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut reader = BufReader::new(sock);
    let mut status = String::new();
    reader.read_line(&mut status).unwrap();
    let code: u16 = status
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status in {status:?}"));
    let mut content_length = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            content_length = v.trim().parse::<usize>().ok();
        }
    }
    let n = content_length.expect("the answer declares its length");
    let mut body = vec![0u8; n];
    reader.read_exact(&mut body).unwrap();
    let v = serde_json::from_slice(&body)
        .unwrap_or_else(|e| panic!("status {code}: body is not JSON ({e})"));
    (code, v)
}

/// Sends a streaming request on a raw socket and returns the socket after the first
/// bytes of the answer arrived.
fn open_stream(addr: &str, max_tokens: usize) -> TcpStream {
    let body = chat_body(
        "Write a very long story about a lighthouse keeper.",
        json!({"max_tokens": max_tokens, "stream": true, "temperature": 0.8}),
    )
    .to_string();
    let mut sock = TcpStream::connect(addr).unwrap();
    write!(
        sock,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 64];
    sock.set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let n = sock.read(&mut first).unwrap();
    assert!(String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"));
    sock
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ok() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_client_that_disconnects_cancels_its_generation() {
    let s = Server::start(&[]);
    let sock = open_stream(&s.addr(), 3000);
    wait_for("the sequence to run", Duration::from_secs(30), || {
        s.metric("pathos_batch_size") >= 1.0
    });
    drop(sock);
    wait_for("the cancellation", Duration::from_secs(30), || {
        s.metric("pathos_cancelled_total") >= 1.0 && s.metric("pathos_batch_size") == 0.0
    });
    assert!(s.metric("pathos_generated_tokens_total") < 3000.0);
}

#[test]
fn a_slow_client_does_not_hold_up_the_others() {
    let s = Server::start(&[]);
    // Never reads its stream.
    let slow = open_stream(&s.addr(), 400);
    let start = Instant::now();
    let (code, v) = s.post(
        "/v1/chat/completions",
        &chat_body("Say yes.", json!({"max_tokens": 8})),
    );
    assert_eq!(code, 200, "{v}");
    assert!(start.elapsed() < Duration::from_secs(60));
    drop(slow);
}

#[test]
fn rewrite_streams_every_turn_then_the_result_and_keeps_the_transcript() {
    let s = Server::start(&[]);
    let res = ureq::post(&format!("{}/v1/pathos/rewrite", s.url))
        .send_json(json!({
            "text": "The bus was late again, so I walked to work in the rain.",
            "target": "joy",
            "max_rounds": 1,
            "writers": 2,
            "candidates": 1,
            "ethics": true,
            "keep_transcript": true,
        }))
        .unwrap();
    let events = sse_events(res.into_reader());
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    for want in ["detect", "round", "turn", "round_end", "result"] {
        assert!(names.contains(&want), "no {want} event in {names:?}");
    }
    let turns = names.iter().filter(|n| **n == "turn").count();
    assert!(
        turns >= 4,
        "2 writer draws and 2 critiques at least: {names:?}"
    );
    let (_, result) = events.iter().find(|(e, _)| e == "result").unwrap();
    let result: Value = serde_json::from_str(result).unwrap();
    let t = &result["transcript"];
    assert!(!t["final_text"].as_str().unwrap().trim().is_empty());
    assert!(result["ethics"]["verdict"].is_string());
    let path = PathBuf::from(result["transcript_path"].as_str().unwrap());
    assert!(path.starts_with(s.dir.join("transcripts")));
    let saved: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    assert_eq!(saved["final_text"], t["final_text"]);
}

#[test]
fn the_remote_backend_runs_detect_and_a_rewrite_through_a_pathos_server() {
    let s = Server::start(&[]);
    let backend = format!("openai:{}", s.url);
    let out = common::pathos(&[
        "--backend",
        &backend,
        "detect",
        "What a wonderful, happy day!",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let remote: Value = serde_json::from_slice(&out.stdout).unwrap();
    let out = common::pathos(&["detect", "What a wonderful, happy day!", "--json"]);
    let local: Value = serde_json::from_slice(&out.stdout).unwrap();
    // Exact scoring through /v1/pathos/score: the same readings as in-process.
    for (r, l) in remote["spectra"]
        .as_array()
        .unwrap()
        .iter()
        .zip(local["spectra"].as_array().unwrap())
    {
        assert_eq!(r["level"], l["level"], "{r} vs {l}");
        assert!((r["expected"].as_f64().unwrap() - l["expected"].as_f64().unwrap()).abs() < 1e-3);
    }
    let out = common::pathos(&[
        "--backend",
        &backend,
        "rewrite",
        "The meeting was moved to Friday.",
        "--to",
        "joy",
        "--max-rounds",
        "1",
        "--writers",
        "2",
        "--candidates",
        "1",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!v["text"].as_str().unwrap_or_default().is_empty(), "{v}");
    // At least both writers' drafts went through the server's batch.
    assert!(s.metric("pathos_admitted_total") >= 2.0);

    let out = common::pathos(&["--backend", "openai:http://127.0.0.1:9", "detect", "hi"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("127.0.0.1:9"), "{err}");
}

#[test]
fn curl_reads_the_stream() {
    let s = Server::start(&[]);
    let out = Command::new("curl")
        .args([
            "-sN",
            &format!("{}/v1/chat/completions", s.url),
            "-H",
            "content-type: application/json",
            "-d",
        ])
        .arg(chat_body("Say hello.", json!({"stream": true, "max_tokens": 6})).to_string())
        .output()
        .expect("curl is installed");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.lines().filter(|l| l.starts_with("data: {")).count() >= 2,
        "{text}"
    );
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
}

/// The `openai` package in a virtual environment under target/ (made on first use).
fn openai_python() -> PathBuf {
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyenv");
    let python = venv.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import openai"])
        .status()
        .is_ok_and(|s| s.success());
    if !ready {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(venv.join("bin/pip"))
                .args(["install", "-q", "openai"])
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            ok,
            "could not install the openai package into {}",
            venv.display()
        );
    }
    python
}

#[test]
fn the_openai_python_client_talks_to_the_server() {
    let python = openai_python();
    let s = Server::start(&[]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/openai-client.py");
    let out = Command::new(python)
        .arg(script)
        .arg(format!("{}/v1", s.url))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for check in ["whole ok", "stream ok", "json ok", "models ok", "error ok"] {
        assert!(stdout.contains(check), "{stdout}");
    }
}

/// Reads SSE events from a rewrite until `stop_at` arrives (or the stream ends).
fn rewrite_until(s: &Server, body: Value, stop_at: &str) -> Vec<(String, String)> {
    let res = ureq::post(&format!("{}/v1/pathos/rewrite", s.url))
        .send_json(body)
        .unwrap();
    let mut out = Vec::new();
    let mut event = String::from("message");
    for line in BufReader::new(res.into_reader()).lines() {
        let Ok(line) = line else { break };
        if let Some(e) = line.strip_prefix("event: ") {
            event = e.to_string();
        } else if let Some(d) = line.strip_prefix("data: ") {
            let name = std::mem::replace(&mut event, "message".into());
            let done = name == stop_at;
            out.push((name, d.to_string()));
            if done {
                break;
            }
        }
    }
    out
}

fn small_rewrite() -> Value {
    json!({
        "text": "The shop closes early on Sundays.",
        "target": "joy",
        "max_rounds": 1,
        "writers": 1,
        "candidates": 1,
        "keep_transcript": true,
    })
}

#[test]
fn a_server_killed_mid_rewrite_leaves_no_corrupt_file_and_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    let mut s = Server::start_in(tempfile::tempdir().unwrap(), path.clone(), &[]);
    let events = rewrite_until(&s, small_rewrite(), "turn");
    assert_eq!(events.last().unwrap().0, "turn", "{events:?}");
    // kill -9: no chance to clean up.
    s.child.kill().unwrap();
    s.child.wait().unwrap();
    let transcripts = path.join("transcripts");
    let s = Server::start_in(dir, path.clone(), &[]);
    let leftovers: Vec<_> = std::fs::read_dir(&transcripts)
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(
        leftovers
            .iter()
            .all(|n| !n.to_string_lossy().starts_with(".pathos-transcript.")),
        "{leftovers:?}"
    );
    // The restarted server finishes a rewrite; every transcript in the directory parses.
    let events = rewrite_until(&s, small_rewrite(), "result");
    assert_eq!(events.last().unwrap().0, "result", "{events:?}");
    let mut whole = 0;
    for e in std::fs::read_dir(&transcripts).unwrap().flatten() {
        let text = std::fs::read_to_string(e.path()).unwrap();
        serde_json::from_str::<Value>(&text)
            .unwrap_or_else(|err| panic!("{}: {err}", e.path().display()));
        whole += 1;
    }
    assert_eq!(whole, 1);
    // The ethics journal the server used still reads.
    let out = common::pathos_cmd(&["ethics", "queue", "--json"])
        .env("PATHOS_JOURNAL", path.join("journal"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `sh -c script` in new mount and network namespaces, or says why it cannot.
fn isolated(script: &str) -> Option<std::process::Output> {
    let probe = Command::new("unshare")
        .args(["-m", "-n", "sh", "-c", "mount -t tmpfs tmpfs /mnt"])
        .output();
    match probe {
        Ok(o) if o.status.success() => {}
        Ok(o) => {
            eprintln!(
                "SKIPPED: this machine does not allow new namespaces: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            return None;
        }
        Err(e) => {
            eprintln!("SKIPPED: unshare is not installed: {e}");
            return None;
        }
    }
    Some(
        Command::new("unshare")
            .args(["-m", "-n", "sh", "-c", script])
            .output()
            .unwrap(),
    )
}

#[test]
fn a_full_disk_under_the_transcript_dir_is_a_clear_error() {
    common::model_path("smollm2-135m");
    let dir = tempfile::tempdir().unwrap();
    let small = dir.path().join("small");
    std::fs::create_dir_all(&small).unwrap();
    // A 16 KiB filesystem for transcripts, filled before the server starts (how long a
    // transcript is depends on what the model writes, so an empty small disk may or may
    // not overflow); the server runs inside that mount namespace
    // and the test talks to it on its (private) loopback, raised first.
    let bin = env!("CARGO_BIN_EXE_pathos");
    let script = format!(
        r#"set -e
ip link set lo up 2>/dev/null || ifconfig lo up 2>/dev/null || true
mount -t tmpfs -o size=16k tmpfs {small}
head -c 65536 /dev/zero > {small}/filler 2>/dev/null || true
PATHOS_JOURNAL={journal} {bin} -t 2 serve --port 18599 --transcript-dir {small} > {log} 2>&1 &
pid=$!
for i in $(seq 1 100); do grep -q listening {log} && break; sleep 0.2; done
curl -sN http://127.0.0.1:18599/v1/pathos/rewrite -H 'content-type: application/json' -d '{body}'
echo; echo "files: $(ls -A {small} | grep -vx filler | wc -l)"
kill $pid"#,
        small = small.display(),
        journal = dir.path().join("journal").display(),
        log = dir.path().join("serve.log").display(),
        body = small_rewrite(),
    );
    let Some(out) = isolated(&script) else { return };
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("listening") || !text.contains("event:") {
        let log = std::fs::read_to_string(dir.path().join("serve.log")).unwrap_or_default();
        if !text.contains("event:") {
            panic!(
                "no rewrite stream:\n{text}\n{}\nserver log:\n{log}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    assert!(text.contains("event: error"), "{text}");
    assert!(
        text.contains("cannot write the transcript") && text.contains("No space left"),
        "{text}"
    );
    assert!(text.contains("files: 0"), "no partial file is left: {text}");
}

#[test]
fn a_rewrite_runs_with_no_network_at_all() {
    common::model_path("smollm2-135m");
    let bin = env!("CARGO_BIN_EXE_pathos");
    let script = format!(
        "cat /proc/net/dev | tail -n +3 | grep -v '^ *lo:' | wc -l; {bin} -t 2 rewrite 'The shop closes early on Sundays.' --to joy --max-rounds 1 --writers 1 --candidates 1 --json"
    );
    let Some(out) = isolated(&script) else { return };
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let (interfaces, json) = text.split_once('\n').unwrap();
    assert_eq!(
        interfaces.trim(),
        "0",
        "only loopback exists in the namespace"
    );
    let v: Value = serde_json::from_str(json).unwrap();
    assert!(!v["text"].as_str().unwrap().is_empty(), "{v}");
}
