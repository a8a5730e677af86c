//! [`RemoteBackend`]: the [`Backend`] trait over OpenAI-compatible servers — another
//! machine's `pathos serve`, llama.cpp's `llama-server`, or a vLLM cluster — so the
//! debate, detection and ethics run unchanged when the models live elsewhere.
//!
//! A `chat` call sends its requests concurrently, spread round-robin over the given
//! URLs (a failing URL is skipped for the next). Scoring needs log-probabilities: a
//! pathos server answers exactly through `/v1/pathos/score`; other servers are asked
//! for one token with `top_logprobs`, and each option is scored by the log-probability
//! of its first token among them (an option outside the top alternatives gets a floor
//! below the least likely one). A server that returns no log-probabilities cannot
//! detect emotions or judge, and says so.

use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Backend, ChatRequest, Completion, Prompt, ScoreRequest, Scores};
use crate::engine::constrain::Constraint;
use crate::engine::generate::{FinishReason, TokenLogprob};
use crate::engine::{Error, Result};
use crate::steer::{Amount, SteerSpec};

/// Alternatives asked for when scoring through `top_logprobs`.
const TOP_LOGPROBS: usize = 20;

/// Whether the servers answer `/v1/pathos/score`: not yet known, yes, no.
const UNKNOWN: u8 = 0;
const EXACT: u8 = 1;
const APPROXIMATE: u8 = 2;

/// Runs requests on OpenAI-compatible servers.
pub struct RemoteBackend {
    urls: Vec<String>,
    api_key: Option<String>,
    agent: ureq::Agent,
    /// Served model names and context sizes, as the first server listed them.
    models: Vec<(String, usize)>,
    next: AtomicUsize,
    scoring: AtomicU8,
}

impl RemoteBackend {
    /// Connects to `spec` (`openai:URL[,URL…]`, or the URLs alone) and reads the models
    /// the first reachable server lists.
    pub fn connect(spec: &str, api_key: Option<String>, timeout: Duration) -> Result<Self> {
        let list = spec.strip_prefix("openai:").unwrap_or(spec);
        let urls: Vec<String> = list
            .split(',')
            .map(|u| u.trim().trim_end_matches('/').trim_end_matches("/v1").to_string())
            .filter(|u| !u.is_empty())
            .collect();
        if urls.is_empty() || urls.iter().any(|u| !u.starts_with("http://") && !u.starts_with("https://")) {
            return Err(Error::Remote {
                url: spec.to_string(),
                detail: "expected openai:http://HOST:PORT[,http://…]".into(),
            });
        }
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(10))
            .timeout(timeout)
            .build();
        let mut backend = Self {
            urls,
            api_key,
            agent,
            models: Vec::new(),
            next: AtomicUsize::new(0),
            scoring: AtomicU8::new(UNKNOWN),
        };
        let listed = backend.get("/v1/models")?;
        let models: Vec<(String, usize)> = listed["data"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|m| {
                        let id = m["id"].as_str()?.to_string();
                        let ctx = m["context_length"]
                            .as_u64()
                            .or(m["max_model_len"].as_u64())
                            .or(m["meta"]["n_ctx_train"].as_u64())
                            .unwrap_or(4096) as usize;
                        Some((id, ctx))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if models.is_empty() {
            return Err(Error::Remote {
                url: backend.urls[0].clone(),
                detail: "the server lists no models at /v1/models".into(),
            });
        }
        backend.models = models;
        Ok(backend)
    }

    fn request(&self, method: &str, url: &str) -> ureq::Request {
        let r = self.agent.request(method, url);
        match &self.api_key {
            Some(k) => r.set("Authorization", &format!("Bearer {k}")),
            None => r,
        }
    }

    fn error(url: &str, e: ureq::Error) -> Error {
        let detail = match e {
            ureq::Error::Status(code, res) => {
                let body = res.into_string().unwrap_or_default();
                let msg = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                    .unwrap_or(body);
                format!("HTTP {code}: {msg}")
            }
            ureq::Error::Transport(t) => t.to_string(),
        };
        Error::Remote {
            url: url.to_string(),
            detail,
        }
    }

    fn get(&self, path: &str) -> Result<Value> {
        let mut last = None;
        for base in &self.urls {
            let url = format!("{base}{path}");
            match self.request("GET", &url).call() {
                Ok(res) => return Self::json(&url, res),
                Err(e) => last = Some(Self::error(&url, e)),
            }
        }
        Err(last.expect("at least one URL"))
    }

    fn json(url: &str, res: ureq::Response) -> Result<Value> {
        res.into_json().map_err(|e| Error::Remote {
            url: url.to_string(),
            detail: format!("the reply is not JSON: {e}"),
        })
    }

    /// POSTs to the next server in turn; a server that cannot be reached passes the
    /// request to the one after it (an HTTP error from a server is final).
    fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last = None;
        for i in 0..self.urls.len() {
            let base = &self.urls[(start + i) % self.urls.len()];
            let url = format!("{base}{path}");
            match self.request("POST", &url).send_json(body.clone()) {
                Ok(res) => return Self::json(&url, res),
                Err(e @ ureq::Error::Status(..)) => return Err(Self::error(&url, e)),
                Err(e) => last = Some(Self::error(&url, e)),
            }
        }
        Err(last.expect("at least one URL"))
    }

    /// The first server's address, for messages.
    pub fn url(&self) -> &str {
        &self.urls[0]
    }

    fn one(&self, r: &ChatRequest) -> Result<Completion> {
        let started = Instant::now();
        let mut body = json!({
            "model": r.model,
            "temperature": r.sampling.temperature,
            "top_p": r.sampling.top_p,
            "min_p": r.sampling.min_p,
            "repeat_penalty": r.sampling.repeat_penalty,
            "seed": r.sampling.seed,
            "max_tokens": r.max_tokens,
            "stream": false,
        });
        if let Some(k) = r.sampling.top_k {
            body["top_k"] = json!(k);
        }
        if !r.stop.is_empty() {
            body["stop"] = json!(r.stop);
        }
        if !r.steer.is_empty() {
            // Understood by pathos servers; others ignore it.
            body["steer"] = json!(r.steer.iter().map(steer_text).collect::<Vec<_>>());
        }
        match &r.constraint {
            None => {}
            Some(Constraint::JsonSchema(schema)) => {
                body["response_format"] = json!({
                    "type": "json_schema",
                    "json_schema": {"name": "answer", "schema": schema, "strict": true},
                });
            }
            Some(other) => {
                return Err(Error::Remote {
                    url: self.url().to_string(),
                    detail: format!(
                        "a remote backend takes JSON-schema constraints only, not {other:?}"
                    ),
                });
            }
        }
        let path = if let Some(text) = &r.prompt.raw {
            body["prompt"] = json!(text);
            if let Some(n) = r.logprobs {
                body["logprobs"] = json!(n);
            }
            "/v1/completions"
        } else {
            body["messages"] = messages(&r.prompt);
            if !r.prompt.prefix.is_empty() {
                body["continue_final_message"] = json!(true);
                body["add_generation_prompt"] = json!(false);
            }
            if let Some(n) = r.logprobs {
                body["logprobs"] = json!(true);
                body["top_logprobs"] = json!(n);
            }
            "/v1/chat/completions"
        };
        let v = self.post(path, &body)?;
        let choice = &v["choices"][0];
        let text = choice["message"]["content"]
            .as_str()
            .or(choice["text"].as_str())
            .unwrap_or_default()
            .to_string();
        let finish_reason = match choice["finish_reason"].as_str() {
            Some("length") => FinishReason::Length,
            _ => FinishReason::Eos,
        };
        let usage = &v["usage"];
        let n = |x: &Value| x.as_u64().unwrap_or(0) as usize;
        Ok(Completion {
            text,
            finish_reason,
            prompt_tokens: n(&usage["prompt_tokens"]),
            cached_tokens: n(&usage["prompt_tokens_details"]["cached_tokens"]),
            generated_tokens: n(&usage["completion_tokens"]),
            prompt_ms: 0.0,
            generation_ms: started.elapsed().as_secs_f64() * 1000.0,
            logprobs: chat_logprobs(&choice["logprobs"]),
        })
    }

    /// Scores through `top_logprobs` of one generated token.
    fn approximate_score(&self, req: &ScoreRequest) -> Result<Vec<f64>> {
        let mut r = ChatRequest {
            model: req.model.clone(),
            prompt: req.prompt.clone(),
            sampling: crate::engine::sampler::SamplingParams::greedy(),
            max_tokens: 1,
            stop: Vec::new(),
            constraint: None,
            steer: Vec::new(),
            logprobs: Some(TOP_LOGPROBS),
        };
        r.sampling.top_k = None;
        let c = self.one(&r)?;
        let Some(first) = c.logprobs.first() else {
            return Err(Error::Remote {
                url: self.url().to_string(),
                detail: "the server returned no top_logprobs; emotion detection and judging need them (llama-server and vLLM return them when asked; check that the server allows top_logprobs = 20)".into(),
            });
        };
        Ok(option_logprobs(first, &req.options))
    }
}

/// A steering spec as the server's `steer` field writes it.
fn steer_text(s: &SteerSpec) -> String {
    match s.amount {
        Amount::Level(l) => format!("{}:{l:+}", s.spectrum),
        Amount::Scale(x) => format!("scale:{}:{x}", s.spectrum),
    }
}

/// The chat as OpenAI messages; a prefix becomes a final assistant message that the
/// server continues.
fn messages(p: &Prompt) -> Value {
    let mut out: Vec<Value> = p
        .messages
        .iter()
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    if !p.prefix.is_empty() {
        out.push(json!({"role": "assistant", "content": p.prefix}));
    }
    Value::Array(out)
}

fn chat_logprobs(v: &Value) -> Vec<TokenLogprob> {
    let Some(items) = v["content"].as_array() else {
        return Vec::new();
    };
    items
        .iter()
        .map(|e| TokenLogprob {
            token: e["token"].as_str().unwrap_or_default().to_string(),
            logprob: e["logprob"].as_f64().unwrap_or(f64::NEG_INFINITY) as f32,
            top: e["top_logprobs"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|t| {
                            (
                                t["token"].as_str().unwrap_or_default().to_string(),
                                t["logprob"].as_f64().unwrap_or(f64::NEG_INFINITY) as f32,
                            )
                        })
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect()
}

/// Each option's score from one step's alternatives: the best alternative that is the
/// option or its beginning; options not among them sit below the least likely one.
fn option_logprobs(step: &TokenLogprob, options: &[String]) -> Vec<f64> {
    let mut top = step.top.clone();
    if top.is_empty() {
        top.push((step.token.clone(), step.logprob));
    }
    let floor = top
        .iter()
        .map(|t| t.1 as f64)
        .fold(f64::INFINITY, f64::min)
        - std::f64::consts::LN_2;
    options
        .iter()
        .map(|o| {
            top.iter()
                .filter(|(tok, _)| {
                    !tok.trim().is_empty() && (o == tok || (o.starts_with(tok.as_str()) && tok.trim().len() >= 1))
                })
                .map(|t| t.1 as f64)
                .fold(f64::NEG_INFINITY, f64::max)
        })
        .map(|l| if l.is_finite() { l } else { floor })
        .collect()
}

impl Backend for RemoteBackend {
    fn models(&self) -> Vec<String> {
        self.models.iter().map(|m| m.0.clone()).collect()
    }

    fn chat(&self, requests: &[ChatRequest]) -> Result<Vec<Completion>> {
        std::thread::scope(|s| {
            let handles: Vec<_> = requests.iter().map(|r| s.spawn(|| self.one(r))).collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(Error::Engine("a request thread failed".into())))
                })
                .collect()
        })
    }

    fn score(&self, req: &ScoreRequest) -> Result<Scores> {
        let started = Instant::now();
        if self.scoring.load(Ordering::Relaxed) != APPROXIMATE {
            let body = json!({"model": req.model, "prompt": req.prompt, "options": req.options});
            match self.post("/v1/pathos/score", &body) {
                Ok(v) => {
                    self.scoring.store(EXACT, Ordering::Relaxed);
                    let logprobs: Vec<f64> = v["logprobs"]
                        .as_array()
                        .map(|a| a.iter().map(|x| x.as_f64().unwrap_or(f64::NEG_INFINITY)).collect())
                        .unwrap_or_default();
                    if logprobs.len() == req.options.len() {
                        return Ok(Scores {
                            logprobs,
                            prompt_tokens: v["prompt_tokens"].as_u64().unwrap_or(0) as usize,
                            ms: started.elapsed().as_secs_f64() * 1000.0,
                        });
                    }
                }
                Err(Error::Remote { detail, .. })
                    if detail.starts_with("HTTP 404") || detail.starts_with("HTTP 405") =>
                {
                    tracing::info!("the remote server has no exact scoring; using top_logprobs");
                    self.scoring.store(APPROXIMATE, Ordering::Relaxed);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(Scores {
            logprobs: self.approximate_score(req)?,
            prompt_tokens: 0,
            ms: started.elapsed().as_secs_f64() * 1000.0,
        })
    }

    fn prompt_room(&self, model: &str, prompt: &Prompt) -> Result<(usize, usize)> {
        // Without the server's tokenizer: about four characters a token, plus the
        // template's few tokens per message.
        let chars: usize = prompt.messages.iter().map(|m| m.content.len() + 16).sum::<usize>()
            + prompt.prefix.len()
            + prompt.raw.as_ref().map_or(0, String::len);
        let context = self
            .models
            .iter()
            .find(|m| m.0 == model)
            .or(self.models.first())
            .map_or(4096, |m| m.1);
        Ok((chars.div_ceil(4), context))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_take_their_first_tokens_logprob_or_a_floor() {
        let step = TokenLogprob {
            token: " joy".into(),
            logprob: -0.5,
            top: vec![(" joy".into(), -0.5), (" sad".into(), -1.5), (" 1".into(), -3.0)],
        };
        let got = option_logprobs(
            &step,
            &[" joy".into(), " sadness".into(), " 10".into(), " rage".into()],
        );
        assert_eq!(got[0], -0.5);
        assert_eq!(got[1], -1.5);
        assert_eq!(got[2], -3.0);
        assert!(got[3] < -3.0);
    }

    #[test]
    fn steering_specs_are_written_as_the_server_parses_them() {
        let s = SteerSpec {
            spectrum: "sadness-joy".into(),
            amount: Amount::Level(0.6),
        };
        assert_eq!(steer_text(&s), "sadness-joy:+0.6");
        let s = SteerSpec {
            spectrum: "sadness-joy".into(),
            amount: Amount::Scale(-8.0),
        };
        assert_eq!(steer_text(&s), "scale:sadness-joy:-8");
    }

    #[test]
    fn bad_specs_are_refused_before_any_connection() {
        for spec in ["openai:", "openai:localhost:8080", "ftp://x"] {
            assert!(RemoteBackend::connect(spec, None, Duration::from_secs(1)).is_err());
        }
    }
}
