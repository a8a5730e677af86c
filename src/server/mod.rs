//! `pathos serve`: an OpenAI-compatible HTTP server over the batched engine, with
//! pathos's own endpoints (rewrite by debate, detection, ethics) and the debate viewer.
//!
//! Every request, whichever client sent it, goes to one [`Scheduler`], so concurrent
//! clients share forward passes (continuous batching). The wait queue is bounded (429
//! with `Retry-After` past it); a client that disconnects cancels its generation and
//! frees its KV cache; requests have a time limit and bodies a size limit; malformed
//! requests get a 4xx with an OpenAI-style JSON error body. The server binds loopback
//! unless told otherwise, and then only with an API key.

pub mod error;
pub mod metrics;
pub mod openai;
mod pathos_api;
pub use pathos_api::remove_stale_transcripts;
mod routes;

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use subtle::ConstantTimeEq;

use crate::backend::scheduler::Scheduler;
use crate::ethics::Standards;
pub use error::ApiError;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    pub host: IpAddr,
    pub port: u16,
    /// Bearer token every `/v1` and `/metrics` request must carry; required to bind a
    /// non-loopback address.
    pub api_key: Option<String>,
    /// Requests that may wait for a place in the batch before new ones get 429.
    pub queue_limit: usize,
    /// Longest a request may take, start to finish.
    pub request_timeout: Duration,
    /// Largest request body accepted, in bytes.
    pub body_limit: usize,
    /// Debates (rewrites, ethics checks) run at once; more get 429.
    pub max_debates: usize,
    /// Where rewrite transcripts are written when a client asks to keep them.
    pub transcript_dir: PathBuf,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            host: IpAddr::from([127, 0, 0, 1]),
            port: 8080,
            api_key: None,
            queue_limit: 64,
            request_timeout: Duration::from_secs(600),
            body_limit: 1 << 20,
            max_debates: 2,
            transcript_dir: crate::engine::registry::pathos_home().join("transcripts"),
        }
    }
}

/// Why the server would not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(
        "refusing to listen on {0} without an API key: anyone who can reach this address could use the models. Pass --api-key KEY (or PATHOS_API_KEY), or bind 127.0.0.1"
    )]
    OpenWithoutKey(IpAddr),
    #[error("the API key must not be empty")]
    EmptyKey,
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("server: {0}")]
    Io(#[from] std::io::Error),
}

/// Refuses a bind address other than loopback unless an API key is set.
pub fn check_bind(host: IpAddr, api_key: Option<&str>) -> Result<(), ServeError> {
    match api_key {
        Some("") => Err(ServeError::EmptyKey),
        Some(_) => Ok(()),
        None if host.is_loopback() => Ok(()),
        None => Err(ServeError::OpenWithoutKey(host)),
    }
}

/// What every handler shares.
pub struct AppState {
    pub scheduler: Arc<Scheduler>,
    /// Served model names (the first is the default) and their context sizes.
    pub models: Vec<(String, usize)>,
    pub options: ServeOptions,
    pub metrics: metrics::Metrics,
    pub standards: Option<Standards>,
    pub debates: Arc<tokio::sync::Semaphore>,
    pub started: Instant,
}

impl AppState {
    pub fn new(
        scheduler: Arc<Scheduler>,
        options: ServeOptions,
        standards: Option<Standards>,
    ) -> crate::engine::Result<Self> {
        let mut models = Vec::new();
        for name in crate::backend::Backend::models(&*scheduler) {
            let context = scheduler.local().model(&name)?.context;
            models.push((name, context));
        }
        Ok(Self {
            scheduler,
            models,
            debates: Arc::new(tokio::sync::Semaphore::new(options.max_debates.max(1))),
            options,
            metrics: metrics::Metrics::default(),
            standards,
            started: Instant::now(),
        })
    }

    /// The served model a request names (the default when it names none).
    pub fn model(&self, name: Option<&str>) -> Result<(String, usize), ApiError> {
        match name.filter(|n| !n.is_empty()) {
            None => Ok(self.models[0].clone()),
            Some(n) => self
                .models
                .iter()
                .find(|(m, _)| m == n)
                .cloned()
                .ok_or_else(|| {
                    ApiError::not_found(
                        format!(
                            "the model `{n}` is not served here (served: {})",
                            self.models
                                .iter()
                                .map(|m| m.0.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        "model_not_found",
                    )
                }),
        }
    }
}

/// A JSON request body as `T`; an empty body, or one missing a field or giving an
/// unknown variant, gets a 400 that says so (naming the field where it can).
fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            None,
            "the request body is empty; send a JSON object",
        ));
    }
    serde_json::from_slice(body).map_err(|e| {
        let msg = e.to_string();
        let param = msg
            .split('`')
            .nth(1)
            .filter(|_| msg.starts_with("missing field") || msg.starts_with("unknown variant"))
            .map(str::to_string);
        ApiError {
            param,
            ..ApiError::invalid(
                None,
                format!("the request body is not a valid request: {msg}"),
            )
        }
    })
}

/// Runs a handler's work, records how long it took under `name` and answers its error,
/// if any, with the error's JSON body.
async fn timed(
    st: &AppState,
    name: &'static str,
    work: impl std::future::Future<Output = Result<Response, ApiError>>,
) -> Response {
    let started = Instant::now();
    let out = work.await;
    st.metrics.record_request(name, started.elapsed());
    out.unwrap_or_else(IntoResponse::into_response)
}

/// Checks the bearer token in constant time when the server has a key.
async fn require_key(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    if let Some(key) = &st.options.api_key {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let ok: bool = given.as_bytes().ct_eq(key.as_bytes()).into();
        if !ok {
            return ApiError::unauthorized().into_response();
        }
    }
    next.run(req).await
}

/// Counts every response by status, and gives the framework's own refusals (body too
/// large, wrong method, …) the JSON error body every other error has. A body whose
/// declared length is over the limit is refused before any of it is read, so a client
/// that waits for `100 Continue` never sends it, and one that does not still gets the
/// answer before most of its upload.
async fn count(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let mut res = match declared {
        Some(n) if n > st.options.body_limit as u64 => {
            axum::http::StatusCode::PAYLOAD_TOO_LARGE.into_response()
        }
        _ => next.run(req).await,
    };
    let status = res.status();
    let json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if (status.is_client_error() || status.is_server_error()) && !json {
        let message = match status {
            axum::http::StatusCode::PAYLOAD_TOO_LARGE => format!(
                "the request body is larger than the server's limit of {} bytes (see --body-limit)",
                st.options.body_limit
            ),
            axum::http::StatusCode::METHOD_NOT_ALLOWED => {
                "this endpoint does not take that method".to_string()
            }
            s => s
                .canonical_reason()
                .unwrap_or("the request was refused")
                .to_string(),
        };
        let mut e = if status.is_client_error() {
            ApiError::invalid(None, message)
        } else {
            ApiError::internal(message)
        };
        e.status = status;
        res = e.into_response();
    }
    st.metrics.record_status(status.as_u16());
    res
}

/// Unknown paths get a JSON 404 like every other error.
async fn not_found(req: Request) -> ApiError {
    ApiError::not_found(
        format!("no endpoint {} {}", req.method(), req.uri().path()),
        "unknown_url",
    )
}

/// The whole HTTP surface.
pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/v1/models", get(routes::models))
        .route("/v1/chat/completions", post(routes::chat_completions))
        .route("/v1/completions", post(routes::completions))
        .route("/v1/pathos/score", post(pathos_api::score))
        .route("/v1/pathos/detect", post(pathos_api::detect))
        .route("/v1/pathos/ethics/check", post(pathos_api::ethics_check))
        .route("/v1/pathos/rewrite", post(pathos_api::rewrite))
        .route("/v1/pathos/emotions", get(pathos_api::emotions))
        .route("/metrics", get(metrics::render))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            require_key,
        ));
    Router::new()
        .route("/", get(routes::viewer))
        .route("/health", get(routes::health))
        .merge(api)
        .fallback(not_found)
        .layer(axum::middleware::from_fn_with_state(state.clone(), count))
        .layer(DefaultBodyLimit::max(state.options.body_limit))
        .with_state(state)
}

/// Binds the configured address (after [`check_bind`]).
pub async fn bind(options: &ServeOptions) -> Result<tokio::net::TcpListener, ServeError> {
    check_bind(options.host, options.api_key.as_deref())?;
    let addr = SocketAddr::new(options.host, options.port);
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// Serves until `shutdown` resolves, then lets running requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown)
        .await?;
    Ok(())
}
