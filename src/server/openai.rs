//! The OpenAI wire format: request bodies parsed and checked into pathos's own
//! [`ChatRequest`], and the reply and stream-chunk shapes OpenAI client libraries read.
//!
//! Parsing is a plain function of the body bytes ([`parse_chat`], [`parse_completion`])
//! so every malformed body becomes an [`ApiError`] naming the field, and so the parsers
//! can be fuzzed without a server. Fields clients commonly send that pathos does not use
//! (`user`, `frequency_penalty`, …) are accepted and ignored; fields whose meaning
//! pathos cannot honour (`n` > 1, `echo`) are refused rather than silently dropped.

use serde::{Deserialize, Serialize};

use super::error::ApiError;
use super::parse_body;
use crate::backend::{ChatRequest, Completion, Prompt};
use crate::engine::constrain::Constraint;
use crate::engine::generate::{FinishReason, TokenLogprob};
use crate::engine::sampler::SamplingParams;
use crate::engine::template::Message;

/// `stop`: one string or a list.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopSpec {
    One(String),
    Many(Vec<String>),
}

/// Message content: a string, or a list of parts of which only text is understood.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatMessage {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct JsonSchemaFormat {
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub schema: Option<serde_json::Value>,
}

/// `response_format`.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ResponseFormat {
    Text,
    JsonObject,
    JsonSchema { json_schema: JsonSchemaFormat },
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Sampling fields shared by both endpoints, including pathos's extensions.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct SamplingFields {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub seed: Option<u64>,
    pub stop: Option<StopSpec>,
    pub max_tokens: Option<u64>,
    /// pathos (and llama-server) extensions.
    pub top_k: Option<usize>,
    pub min_p: Option<f32>,
    pub repeat_penalty: Option<f32>,
    pub n: Option<u32>,
    /// Emotion steering, as on the command line: `["sadness-joy:+0.6"]`.
    #[serde(default)]
    pub steer: Vec<String>,
}

/// `POST /v1/chat/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct ChatCompletionRequest {
    pub model: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    pub max_completion_tokens: Option<u64>,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<u32>,
    pub response_format: Option<ResponseFormat>,
}

/// `prompt` of the completions endpoint: one string (a one-element list is accepted).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptSpec {
    One(String),
    Many(Vec<String>),
}

/// `POST /v1/completions`.
#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub model: Option<String>,
    pub prompt: PromptSpec,
    #[serde(flatten)]
    pub sampling: SamplingFields,
    #[serde(default)]
    pub stream: bool,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
    /// The number of alternatives to report per token (the legacy API's integer).
    pub logprobs: Option<u32>,
    #[serde(default)]
    pub echo: bool,
}

/// Stop strings a request may give (OpenAI allows 4; pathos's own debate prompts use
/// more, and so may a remote pathos client).
pub const MAX_STOPS: usize = 16;

/// The most alternatives per token a client may ask for (as OpenAI allows).
pub const MAX_TOP_LOGPROBS: u32 = 20;

/// Parses and checks a chat completions body.
pub fn parse_chat(body: &[u8]) -> Result<ChatCompletionRequest, ApiError> {
    let req: ChatCompletionRequest = parse_body(body)?;
    if req.messages.is_empty() {
        return Err(ApiError::invalid(
            Some("messages"),
            "`messages` must not be empty",
        ));
    }
    if let Some(n) = req.top_logprobs {
        if n > MAX_TOP_LOGPROBS {
            return Err(ApiError::invalid(
                Some("top_logprobs"),
                format!("`top_logprobs` must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"),
            ));
        }
        if !req.logprobs {
            return Err(ApiError::invalid(
                Some("top_logprobs"),
                "`top_logprobs` needs `logprobs: true`",
            ));
        }
    }
    Ok(req)
}

/// Parses and checks a completions body.
pub fn parse_completion(body: &[u8]) -> Result<CompletionRequest, ApiError> {
    let req: CompletionRequest = parse_body(body)?;
    if req.echo {
        return Err(ApiError::invalid(Some("echo"), "`echo` is not supported"));
    }
    if let PromptSpec::Many(p) = &req.prompt
        && p.len() != 1
    {
        return Err(ApiError::invalid(
            Some("prompt"),
            "`prompt` must be one string (a list of several prompts is not supported; send one request each)",
        ));
    }
    if let Some(n) = req.logprobs
        && n > MAX_TOP_LOGPROBS
    {
        return Err(ApiError::invalid(
            Some("logprobs"),
            format!("`logprobs` must be between 0 and {MAX_TOP_LOGPROBS}, got {n}"),
        ));
    }
    Ok(req)
}

impl SamplingFields {
    /// pathos's sampling settings: each field the client gave, the engine's defaults
    /// for the rest (a fresh random seed when none is given).
    fn params(&self) -> Result<SamplingParams, ApiError> {
        if let Some(n) = self.n
            && n != 1
        {
            return Err(ApiError::invalid(Some("n"), "only `n: 1` is supported"));
        }
        let d = SamplingParams::default();
        let p = SamplingParams {
            temperature: self.temperature.unwrap_or(d.temperature),
            top_p: self.top_p.unwrap_or(d.top_p),
            top_k: match self.top_k {
                Some(0) => None,
                Some(k) => Some(k),
                None => d.top_k,
            },
            min_p: self.min_p.unwrap_or(d.min_p),
            repeat_penalty: self.repeat_penalty.unwrap_or(d.repeat_penalty),
            repeat_last_n: d.repeat_last_n,
            seed: self.seed.unwrap_or_else(rand::random),
        };
        if let Some(t) = self.temperature
            && !(0.0..=2.0).contains(&t)
        {
            return Err(ApiError::invalid(
                Some("temperature"),
                format!("`temperature` must be between 0 and 2, got {t}"),
            ));
        }
        p.validate()
            .map_err(|e| ApiError::invalid(None, e.to_string()))?;
        Ok(p)
    }

    fn stops(&self) -> Result<Vec<String>, ApiError> {
        let stops = match &self.stop {
            None => Vec::new(),
            Some(StopSpec::One(s)) => vec![s.clone()],
            Some(StopSpec::Many(v)) => v.clone(),
        };
        if stops.len() > MAX_STOPS || stops.iter().any(String::is_empty) {
            return Err(ApiError::invalid(
                Some("stop"),
                format!("`stop` takes at most {MAX_STOPS} non-empty strings"),
            ));
        }
        Ok(stops)
    }

    fn max_tokens(&self, other: Option<u64>, default: usize) -> Result<usize, ApiError> {
        match other.or(self.max_tokens) {
            None => Ok(default),
            Some(0) => Err(ApiError::invalid(
                Some("max_tokens"),
                "`max_tokens` must be at least 1",
            )),
            Some(n) => Ok(usize::try_from(n).unwrap_or(usize::MAX)),
        }
    }

    /// `steer` entries are levels on a spectrum (`sadness-joy:+0.6`) unless written
    /// as `scale:SPECTRUM:X` for a raw vector scale.
    fn steer(&self) -> Result<Vec<crate::steer::SteerSpec>, ApiError> {
        let beam = crate::emotion::beam::Beam::builtin();
        self.steer
            .iter()
            .map(|s| {
                let (text, raw) = match s.strip_prefix("scale:") {
                    Some(rest) => (rest, true),
                    None => (s.as_str(), false),
                };
                crate::steer::SteerSpec::parse(text, raw, beam)
                    .map_err(|e| ApiError::invalid(Some("steer"), e.to_string()))
            })
            .collect()
    }
}

fn content_text(c: &Option<Content>) -> Result<String, ApiError> {
    match c {
        None => Ok(String::new()),
        Some(Content::Text(s)) => Ok(s.clone()),
        Some(Content::Parts(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (p.kind.as_str(), &p.text) {
                    ("text", Some(t)) => out.push_str(t),
                    (kind, _) => {
                        return Err(ApiError::invalid(
                            Some("messages"),
                            format!("content parts of type `{kind}` are not supported (text only)"),
                        ));
                    }
                }
            }
            Ok(out)
        }
    }
}

impl ChatCompletionRequest {
    /// The request as pathos runs it. A last message from the assistant is the start
    /// of the answer (the model continues it), as llama-server does.
    pub fn to_request(&self, model: &str, context: usize) -> Result<ChatRequest, ApiError> {
        let mut messages = Vec::with_capacity(self.messages.len());
        for m in &self.messages {
            let role = match m.role.as_str() {
                "system" | "developer" => "system",
                "user" => "user",
                "assistant" => "assistant",
                other => {
                    return Err(ApiError::invalid(
                        Some("messages"),
                        format!(
                            "unsupported message role `{other}` (system, developer, user, assistant)"
                        ),
                    ));
                }
            };
            messages.push(Message::new(role, content_text(&m.content)?));
        }
        let mut prefix = String::new();
        if messages.last().is_some_and(|m| m.role == "assistant") {
            prefix = messages.pop().map(|m| m.content).unwrap_or_default();
        }
        if messages.is_empty() {
            return Err(ApiError::invalid(
                Some("messages"),
                "`messages` needs at least one message before the assistant's",
            ));
        }
        let constraint = match &self.response_format {
            None | Some(ResponseFormat::Text) => None,
            Some(ResponseFormat::JsonObject) => Some(Constraint::JsonSchema(
                serde_json::json!({"type": "object"}),
            )),
            Some(ResponseFormat::JsonSchema { json_schema }) => Some(Constraint::JsonSchema(
                json_schema
                    .schema
                    .clone()
                    .unwrap_or_else(|| serde_json::json!({"type": "object"})),
            )),
        };
        Ok(ChatRequest {
            model: model.to_string(),
            prompt: Prompt {
                messages,
                prefix,
                raw: None,
            },
            sampling: self.sampling.params()?,
            max_tokens: self
                .sampling
                .max_tokens(self.max_completion_tokens, context)?,
            stop: self.sampling.stops()?,
            constraint,
            steer: self.sampling.steer()?,
            logprobs: self
                .logprobs
                .then(|| self.top_logprobs.unwrap_or(0) as usize),
        })
    }
}

impl CompletionRequest {
    /// The request as pathos runs it: the prompt as raw text, no chat template.
    pub fn to_request(&self, model: &str) -> Result<ChatRequest, ApiError> {
        let text = match &self.prompt {
            PromptSpec::One(s) => s.clone(),
            PromptSpec::Many(v) => v.first().cloned().unwrap_or_default(),
        };
        if text.is_empty() {
            return Err(ApiError::invalid(
                Some("prompt"),
                "`prompt` must not be empty",
            ));
        }
        Ok(ChatRequest {
            model: model.to_string(),
            prompt: Prompt::raw(text),
            sampling: self.sampling.params()?,
            // The legacy API's default.
            max_tokens: self.sampling.max_tokens(None, 16)?,
            stop: self.sampling.stops()?,
            constraint: None,
            steer: self.sampling.steer()?,
            logprobs: self.logprobs.map(|n| n as usize),
        })
    }
}

/// OpenAI's name for why generation ended.
pub fn finish_reason(f: FinishReason) -> &'static str {
    match f {
        FinishReason::Length => "length",
        FinishReason::Eos | FinishReason::Stop | FinishReason::Cancelled => "stop",
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
    pub prompt_tokens_details: CachedTokens,
}

#[derive(Debug, Clone, Serialize)]
pub struct CachedTokens {
    pub cached_tokens: usize,
}

impl Usage {
    pub fn of(c: &Completion) -> Self {
        Self {
            prompt_tokens: c.prompt_tokens,
            completion_tokens: c.generated_tokens,
            total_tokens: c.prompt_tokens + c.generated_tokens,
            prompt_tokens_details: CachedTokens {
                cached_tokens: c.cached_tokens,
            },
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LogprobEntry {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<TopLogprob>,
}

/// Chat-format log-probabilities: `{"content": [...]}`.
#[derive(Debug, Clone, Serialize)]
pub struct ChatLogprobs {
    pub content: Vec<LogprobEntry>,
}

impl ChatLogprobs {
    pub fn of(lps: &[TokenLogprob]) -> Self {
        Self {
            content: lps
                .iter()
                .map(|lp| LogprobEntry {
                    token: lp.token.clone(),
                    logprob: lp.logprob,
                    bytes: lp.token.as_bytes().to_vec(),
                    top_logprobs: lp
                        .top
                        .iter()
                        .map(|(t, l)| TopLogprob {
                            token: t.clone(),
                            logprob: *l,
                            bytes: t.as_bytes().to_vec(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

/// Legacy completions-format log-probabilities.
#[derive(Debug, Clone, Serialize)]
pub struct TextLogprobs {
    pub tokens: Vec<String>,
    pub token_logprobs: Vec<f32>,
    pub top_logprobs: Vec<serde_json::Map<String, serde_json::Value>>,
    pub text_offset: Vec<usize>,
}

impl TextLogprobs {
    pub fn of(lps: &[TokenLogprob], start: usize) -> Self {
        let mut offset = start;
        let mut text_offset = Vec::with_capacity(lps.len());
        for lp in lps {
            text_offset.push(offset);
            offset += lp.token.len();
        }
        Self {
            tokens: lps.iter().map(|l| l.token.clone()).collect(),
            token_logprobs: lps.iter().map(|l| l.logprob).collect(),
            top_logprobs: lps
                .iter()
                .map(|l| {
                    l.top
                        .iter()
                        .map(|(t, p)| (t.clone(), serde_json::json!(p)))
                        .collect()
                })
                .collect(),
            text_offset,
        }
    }
}

/// A model as `GET /v1/models` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ModelCard {
    pub id: String,
    pub object: &'static str,
    pub created: u64,
    pub owned_by: &'static str,
}

/// Seconds since the Unix epoch, for `created` fields.
pub fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chat(body: &str) -> Result<ChatRequest, ApiError> {
        parse_chat(body.as_bytes())?.to_request("m", 2048)
    }

    #[test]
    fn parses_a_plain_chat_request_with_defaults() {
        let r =
            chat(r#"{"model":"x","messages":[{"role":"user","content":"hi"}],"seed":7}"#).unwrap();
        assert_eq!(r.prompt.messages.len(), 1);
        assert_eq!(r.sampling.seed, 7);
        assert_eq!(r.max_tokens, 2048);
        assert!(r.logprobs.is_none() && r.constraint.is_none());
    }

    #[test]
    fn text_parts_join_and_a_last_assistant_message_becomes_the_prefix() {
        let r = chat(
            r#"{"messages":[{"role":"developer","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
               {"role":"user","content":"q"},{"role":"assistant","content":"Answer:"}]}"#,
        )
        .unwrap();
        assert_eq!(r.prompt.messages[0].role, "system");
        assert_eq!(r.prompt.messages[0].content, "ab");
        assert_eq!(r.prompt.prefix, "Answer:");
    }

    #[test]
    fn response_formats_become_json_schema_constraints() {
        let r = chat(r#"{"messages":[{"role":"user","content":"q"}],"response_format":{"type":"json_object"}}"#).unwrap();
        assert!(matches!(r.constraint, Some(Constraint::JsonSchema(_))));
        let r = chat(r#"{"messages":[{"role":"user","content":"q"}],"response_format":{"type":"json_schema","json_schema":{"name":"x","schema":{"type":"object","properties":{"a":{"type":"integer"}}}}}}"#).unwrap();
        match r.constraint {
            Some(Constraint::JsonSchema(s)) => assert_eq!(s["properties"]["a"]["type"], "integer"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_requests_name_their_parameter() {
        let cases = [
            ("", None),
            ("{", None),
            ("[]", None),
            (r#"{"messages":[]}"#, Some("messages")),
            (r#"{"model":"x"}"#, Some("messages")),
            (
                r#"{"messages":[{"role":"user","content":"q"}],"n":2}"#,
                Some("n"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"q"}],"temperature":9}"#,
                Some("temperature"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"q"}],"max_tokens":0}"#,
                Some("max_tokens"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"q"}],"top_logprobs":3}"#,
                Some("top_logprobs"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"q"}],"logprobs":true,"top_logprobs":99}"#,
                Some("top_logprobs"),
            ),
            (
                r#"{"messages":[{"role":"tool","content":"q"}]}"#,
                Some("messages"),
            ),
            (
                r#"{"messages":[{"role":"user","content":[{"type":"image_url"}]}]}"#,
                Some("messages"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"q"}],"stop":["","x"]}"#,
                Some("stop"),
            ),
            (
                r#"{"messages":[{"role":"user","content":"q"}],"response_format":{"type":"xml"}}"#,
                None,
            ),
            (
                r#"{"messages":[{"role":"user","content":"q"}],"steer":["nope:+9"]}"#,
                Some("steer"),
            ),
            (
                r#"{"messages":[{"role":"assistant","content":"q"}]}"#,
                Some("messages"),
            ),
        ];
        for (body, param) in cases {
            let e = chat(body).expect_err(body);
            assert_eq!(e.status, axum::http::StatusCode::BAD_REQUEST, "{body}");
            if param.is_some() {
                assert_eq!(e.param.as_deref(), param, "{body}: {}", e.message);
            }
            assert!(!e.message.is_empty());
        }
    }

    #[test]
    fn completions_take_one_raw_prompt() {
        let r = parse_completion(br#"{"prompt":"Once upon","max_tokens":5,"logprobs":2}"#)
            .unwrap()
            .to_request("m")
            .unwrap();
        assert_eq!(r.prompt.raw.as_deref(), Some("Once upon"));
        assert_eq!((r.max_tokens, r.logprobs), (5, Some(2)));
        assert!(parse_completion(br#"{"prompt":["a","b"]}"#).is_err());
        assert!(parse_completion(br#"{"prompt":"a","echo":true}"#).is_err());
        assert!(
            parse_completion(br#"{"prompt":""}"#)
                .unwrap()
                .to_request("m")
                .is_err()
        );
    }
}
