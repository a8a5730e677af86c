//! The OpenAI-compatible endpoints, `/health` and the viewer page.

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc::UnboundedReceiver;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

use super::openai::{self, ChatLogprobs, TextLogprobs, Usage, finish_reason, now};
use super::{ApiError, AppState, timed};
use crate::backend::Completion;
use crate::backend::scheduler::ChatEvent;
use crate::engine::generate::TokenLogprob;

/// The debate viewer (live mode; `pathos report` embeds a transcript in the same page).
pub async fn viewer() -> Html<&'static str> {
    Html(include_str!("viewer/index.html"))
}

pub async fn health(State(st): State<Arc<AppState>>) -> Json<Value> {
    let s = st.scheduler.stats();
    Json(json!({
        "status": "ok",
        "models": st.models.iter().map(|m| &m.0).collect::<Vec<_>>(),
        "waiting": s.waiting.load(Ordering::Relaxed),
        "running": s.running.load(Ordering::Relaxed),
        "uptime_seconds": st.started.elapsed().as_secs(),
    }))
}

pub async fn models(State(st): State<Arc<AppState>>) -> Json<Value> {
    let created = now();
    Json(json!({
        "object": "list",
        "data": st.models.iter().map(|(id, context)| json!({
            "id": id,
            "object": "model",
            "created": created,
            "owned_by": "pathos",
            "context_length": context,
        })).collect::<Vec<_>>(),
    }))
}

/// Which wire format a stream speaks.
#[derive(Clone, Copy, PartialEq)]
enum Api {
    Chat,
    Text,
}

fn request_id(api: Api) -> String {
    let prefix = match api {
        Api::Chat => "chatcmpl",
        Api::Text => "cmpl",
    };
    format!("{prefix}-{:016x}", rand::random::<u64>())
}

pub async fn chat_completions(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    timed(&st, "chat_completions", async {
        let req = openai::parse_chat(&body)?;
        let (model, context) = st.model(req.model.as_deref())?;
        let creq = req.to_request(&model, context)?;
        let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
        run(
            &st,
            creq,
            Api::Chat,
            req.stream,
            include_usage,
            req.logprobs,
        )
        .await
    })
    .await
}

pub async fn completions(State(st): State<Arc<AppState>>, body: Bytes) -> Response {
    timed(&st, "completions", async {
        let req = openai::parse_completion(&body)?;
        let (model, _) = st.model(req.model.as_deref())?;
        let creq = req.to_request(&model)?;
        let include_usage = req.stream_options.as_ref().is_some_and(|o| o.include_usage);
        run(
            &st,
            creq,
            Api::Text,
            req.stream,
            include_usage,
            req.logprobs.is_some(),
        )
        .await
    })
    .await
}

/// Queues a request and answers it whole or as a stream. Errors found when the request
/// is admitted (context overflow, a bad schema) still get their status code: the
/// stream starts only once the first text or the result is there.
async fn run(
    st: &Arc<AppState>,
    req: crate::backend::ChatRequest,
    api: Api,
    stream: bool,
    include_usage: bool,
    logprobs: bool,
) -> Result<Response, ApiError> {
    let model = req.model.clone();
    let mut rx = st
        .scheduler
        .submit(req, true)
        .map_err(|e| ApiError::busy(e.to_string(), 1))?;
    let timeout = st.options.request_timeout;
    let deadline = tokio::time::Instant::now() + timeout;
    if !stream {
        let c = tokio::time::timeout_at(deadline, done(&mut rx))
            .await
            .map_err(|_| ApiError::timeout(timeout.as_secs()))??;
        return Ok(Json(whole(api, &model, &c, logprobs)).into_response());
    }
    let first = tokio::time::timeout_at(deadline, rx.recv())
        .await
        .map_err(|_| ApiError::timeout(timeout.as_secs()))?;
    let first = match first {
        Some(ChatEvent::Done(Err(e))) => return Err(e.into()),
        Some(ev) => ev,
        None => return Err(ApiError::internal("the engine stopped")),
    };
    let (tx, out) = tokio::sync::mpsc::channel::<Event>(32);
    let stream = Streamer {
        api,
        id: request_id(api),
        model,
        created: now(),
        include_usage,
        logprobs,
        offset: 0,
        tx,
    };
    tokio::spawn(stream.pump(first, rx, deadline, timeout.as_secs()));
    Ok(Sse::new(ReceiverStream::new(out).map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::default())
        .into_response())
}

/// Waits for the result, ignoring the streamed pieces.
async fn done(rx: &mut UnboundedReceiver<ChatEvent>) -> Result<Completion, ApiError> {
    while let Some(ev) = rx.recv().await {
        if let ChatEvent::Done(r) = ev {
            return r.map_err(ApiError::from);
        }
    }
    Err(ApiError::internal("the engine stopped"))
}

/// The non-streamed reply.
fn whole(api: Api, model: &str, c: &Completion, logprobs: bool) -> Value {
    let usage = Usage::of(c);
    match api {
        Api::Chat => json!({
            "id": request_id(api),
            "object": "chat.completion",
            "created": now(),
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": logprobs.then(|| ChatLogprobs::of(&c.logprobs)),
                "finish_reason": finish_reason(c.finish_reason),
            }],
            "usage": usage,
        }),
        Api::Text => json!({
            "id": request_id(api),
            "object": "text_completion",
            "created": now(),
            "model": model,
            "choices": [{
                "index": 0,
                "text": c.text,
                "logprobs": logprobs.then(|| TextLogprobs::of(&c.logprobs, 0)),
                "finish_reason": finish_reason(c.finish_reason),
            }],
            "usage": usage,
        }),
    }
}

/// Turns engine events into SSE chunks for one client. When the client goes away the
/// send fails, the pump returns and drops the engine's receiver, which cancels the
/// sequence; a slow client only fills this task's buffer, never the engine's.
struct Streamer {
    api: Api,
    id: String,
    model: String,
    created: u64,
    include_usage: bool,
    logprobs: bool,
    /// Text sent so far, in bytes (completions' `text_offset`).
    offset: usize,
    tx: tokio::sync::mpsc::Sender<Event>,
}

impl Streamer {
    fn chunk(&self, choice: Value, usage: Option<Value>) -> Value {
        let object = match self.api {
            Api::Chat => "chat.completion.chunk",
            Api::Text => "text_completion",
        };
        let mut v = json!({
            "id": self.id,
            "object": object,
            "created": self.created,
            "model": self.model,
            "choices": if choice.is_null() { json!([]) } else { json!([choice]) },
        });
        if let Some(u) = usage {
            v["usage"] = u;
        }
        v
    }

    fn piece(&mut self, text: &str, lps: &[TokenLogprob], finish: Option<&str>) -> Value {
        let choice = match self.api {
            Api::Chat => json!({
                "index": 0,
                "delta": if text.is_empty() && finish.is_some() { json!({}) } else { json!({"content": text}) },
                "logprobs": (self.logprobs && !lps.is_empty()).then(|| ChatLogprobs::of(lps)),
                "finish_reason": finish,
            }),
            Api::Text => json!({
                "index": 0,
                "text": text,
                "logprobs": (self.logprobs && !lps.is_empty()).then(|| TextLogprobs::of(lps, self.offset)),
                "finish_reason": finish,
            }),
        };
        self.offset += text.len();
        self.chunk(choice, None)
    }

    async fn send(&self, v: Value) -> bool {
        self.tx
            .send(Event::default().data(v.to_string()))
            .await
            .is_ok()
    }

    async fn pump(
        mut self,
        first: ChatEvent,
        mut rx: UnboundedReceiver<ChatEvent>,
        deadline: tokio::time::Instant,
        timeout_secs: u64,
    ) {
        if self.api == Api::Chat {
            let role = self.chunk(
                json!({"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}),
                None,
            );
            if !self.send(role).await {
                return;
            }
        }
        let mut pending: Vec<TokenLogprob> = Vec::new();
        let mut next = Some(first);
        loop {
            let ev = match next.take() {
                Some(ev) => ev,
                None => match tokio::time::timeout_at(deadline, rx.recv()).await {
                    Ok(Some(ev)) => ev,
                    Ok(None) => {
                        let _ = self
                            .send(ApiError::internal("the engine stopped").body())
                            .await;
                        return;
                    }
                    Err(_) => {
                        let _ = self.send(ApiError::timeout(timeout_secs).body()).await;
                        return;
                    }
                },
            };
            match ev {
                ChatEvent::Logprob(lp) => pending.push(lp),
                ChatEvent::Text(t) => {
                    let v = self.piece(&t, &pending, None);
                    pending.clear();
                    if !self.send(v).await {
                        return;
                    }
                }
                ChatEvent::Done(Ok(c)) => {
                    let v = self.piece("", &pending, Some(finish_reason(c.finish_reason)));
                    if !self.send(v).await {
                        return;
                    }
                    if self.include_usage {
                        let u = self.chunk(Value::Null, Some(json!(Usage::of(&c))));
                        if !self.send(u).await {
                            return;
                        }
                    }
                    let _ = self.tx.send(Event::default().data("[DONE]")).await;
                    return;
                }
                ChatEvent::Done(Err(e)) => {
                    let _ = self.send(ApiError::from(e).body()).await;
                    return;
                }
            }
        }
    }
}
