//! [`Scheduler`]: one engine thread that decodes the requests of every caller together
//! (continuous batching), for the server.
//!
//! Callers on any thread submit work and get a channel of events back. Between forward
//! passes the engine thread admits waiting requests into the running batch (up to
//! [`MAX_BATCH`](super::local::MAX_BATCH) per model), runs scoring questions, and lets
//! finished or cancelled sequences go, returning their sessions (KV caches) to the
//! model's pool. Requests that arrive together and share a long prompt prefix compute it
//! once. Waiting requests are bounded: past `queue_limit`, a bounded submission is
//! refused at once so the server can answer 429 instead of queueing without end.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Instant;

use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

use super::local::{LocalBackend, MAX_BATCH, completion, encode, generate_request, share_prefixes};
use super::{Backend, ChatRequest, Completion, Prompt, ScoreRequest, Scores};
use crate::engine::generate::{FinishReason, Sequence, TokenLogprob, TokenSink, step};
use crate::engine::{Error, Result};

/// What a submitted chat request reports, in order: text and log-probabilities as they
/// are generated, then the completion (or why it failed).
#[derive(Debug)]
pub enum ChatEvent {
    Text(String),
    Logprob(TokenLogprob),
    Done(Result<Completion>),
}

/// Counters for monitoring; read with [`Scheduler::stats`].
#[derive(Debug, Default)]
pub struct Stats {
    /// Chat requests admitted into a batch.
    pub admitted: AtomicU64,
    /// Requests refused because the queue was full.
    pub rejected: AtomicU64,
    /// Requests that ended because their caller went away.
    pub cancelled: AtomicU64,
    pub prompt_tokens: AtomicU64,
    pub generated_tokens: AtomicU64,
    /// Forward passes run and the sequences they carried (mean batch = rows / steps).
    pub steps: AtomicU64,
    pub step_rows: AtomicU64,
    /// Time spent in forward passes and sampling, in microseconds.
    pub busy_us: AtomicU64,
    /// Requests waiting to be admitted, and sequences running now.
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
}

enum Work {
    Chat {
        req: ChatRequest,
        events: UnboundedSender<ChatEvent>,
    },
    Score {
        req: ScoreRequest,
        reply: UnboundedSender<Result<Scores>>,
    },
}

/// Streams a sequence's output to its caller; a dropped receiver cancels it.
struct ChannelSink(UnboundedSender<ChatEvent>);

impl TokenSink for ChannelSink {
    fn text(&mut self, text: &str) -> bool {
        text.is_empty() || self.0.send(ChatEvent::Text(text.to_string())).is_ok()
    }

    fn logprob(&mut self, logprob: &TokenLogprob) {
        let _ = self.0.send(ChatEvent::Logprob(logprob.clone()));
    }

    fn cancelled(&self) -> bool {
        self.0.is_closed()
    }
}

/// A handle to the engine thread; cheap to share. Dropping the last handle stops the
/// thread once running work is done.
pub struct Scheduler {
    local: Arc<LocalBackend>,
    work: std::sync::mpsc::Sender<Work>,
    stats: Arc<Stats>,
    queue_limit: usize,
}

/// Returned when the wait queue is full.
#[derive(Debug, thiserror::Error)]
#[error("the server is busy: {waiting} requests are waiting (limit {limit}); retry shortly")]
pub struct QueueFull {
    pub waiting: usize,
    pub limit: usize,
}

impl Scheduler {
    /// Starts the engine thread over `local`'s models.
    pub fn start(local: Arc<LocalBackend>, queue_limit: usize) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel();
        let stats = Arc::new(Stats::default());
        let engine = Engine {
            local: local.clone(),
            stats: stats.clone(),
            waiting: VecDeque::new(),
            running: Vec::new(),
        };
        std::thread::Builder::new()
            .name("pathos-engine".into())
            .spawn(move || engine.run(rx))
            .map_err(|e| Error::Engine(format!("cannot start the engine thread: {e}")))?;
        Ok(Self {
            local,
            work: tx,
            stats,
            queue_limit,
        })
    }

    /// The counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The backend that owns the models.
    pub fn local(&self) -> &LocalBackend {
        &self.local
    }

    /// Queues a chat request; `bounded` submissions are refused when the queue is full.
    pub fn submit(
        &self,
        req: ChatRequest,
        bounded: bool,
    ) -> std::result::Result<UnboundedReceiver<ChatEvent>, QueueFull> {
        let waiting = self.stats.waiting.fetch_add(1, Ordering::SeqCst);
        if bounded && waiting >= self.queue_limit {
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            self.stats.rejected.fetch_add(1, Ordering::Relaxed);
            return Err(QueueFull {
                waiting,
                limit: self.queue_limit,
            });
        }
        let (tx, rx) = unbounded_channel();
        if let Err(e) = self.work.send(Work::Chat { req, events: tx }) {
            self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
            if let Work::Chat { events, .. } = e.0 {
                let _ = events.send(ChatEvent::Done(Err(stopped())));
            }
        }
        Ok(rx)
    }

    /// Queues a scoring question (answered between forward passes).
    pub fn submit_score(&self, req: ScoreRequest) -> UnboundedReceiver<Result<Scores>> {
        let (tx, rx) = unbounded_channel();
        if let Err(e) = self.work.send(Work::Score { req, reply: tx })
            && let Work::Score { reply, .. } = e.0
        {
            let _ = reply.send(Err(stopped()));
        }
        rx
    }
}

fn stopped() -> Error {
    Error::Engine("the engine thread has stopped".into())
}

/// Waits (blocking) for a submitted request's completion, ignoring its stream.
fn wait(mut rx: UnboundedReceiver<ChatEvent>) -> Result<Completion> {
    while let Some(ev) = rx.blocking_recv() {
        if let ChatEvent::Done(r) = ev {
            return r;
        }
    }
    Err(stopped())
}

/// The debate, detection and ethics code run on the scheduler through this: their
/// requests join the same batches as the server's clients (and are never refused).
impl Backend for Scheduler {
    fn models(&self) -> Vec<String> {
        self.local.models()
    }

    fn chat(&self, requests: &[ChatRequest]) -> Result<Vec<Completion>> {
        let rxs: Vec<_> = requests
            .iter()
            .map(|r| self.submit(r.clone(), false).expect("unbounded submission"))
            .collect();
        rxs.into_iter().map(wait).collect()
    }

    fn score(&self, request: &ScoreRequest) -> Result<Scores> {
        self.submit_score(request.clone())
            .blocking_recv()
            .unwrap_or_else(|| Err(stopped()))
    }

    fn prompt_room(&self, model: &str, prompt: &Prompt) -> Result<(usize, usize)> {
        self.local.prompt_room(model, prompt)
    }
}

/// A running sequence and where its result goes.
struct Running {
    model: String,
    seq: Sequence,
    shared: (usize, f64),
    events: UnboundedSender<ChatEvent>,
}

/// The engine thread's state.
struct Engine {
    local: Arc<LocalBackend>,
    stats: Arc<Stats>,
    waiting: VecDeque<Work>,
    running: Vec<Running>,
}

impl Engine {
    fn run(mut self, rx: std::sync::mpsc::Receiver<Work>) {
        loop {
            if self.running.is_empty() && self.waiting.is_empty() {
                match rx.recv() {
                    Ok(w) => self.waiting.push_back(w),
                    Err(_) => return,
                }
            }
            while let Ok(w) = rx.try_recv() {
                self.waiting.push_back(w);
            }
            self.admit();
            self.step();
        }
    }

    /// Answers scoring questions and moves chat requests into the batch while there is
    /// room, grouped by model so prompt prefixes can be shared.
    fn admit(&mut self) {
        let mut chats: Vec<(ChatRequest, UnboundedSender<ChatEvent>)> = Vec::new();
        let mut kept = VecDeque::new();
        while let Some(w) = self.waiting.pop_front() {
            match w {
                Work::Score { req, reply } => {
                    let _ = reply.send(self.local.score(&req));
                }
                Work::Chat { req, events } => {
                    let busy = self.running.iter().filter(|r| r.model == req.model).count()
                        + chats.iter().filter(|(r, _)| r.model == req.model).count();
                    if events.is_closed() {
                        self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
                        self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                    } else if busy < MAX_BATCH {
                        self.stats.waiting.fetch_sub(1, Ordering::SeqCst);
                        chats.push((req, events));
                    } else {
                        kept.push_back(Work::Chat { req, events });
                    }
                }
            }
        }
        self.waiting = kept;
        for name in super::models_in_order(chats.iter().map(|(r, _)| r.model.as_str())) {
            let group: Vec<_> = chats.iter().filter(|(r, _)| r.model == name).collect();
            self.start_group(&name, &group);
        }
        self.stats
            .running
            .store(self.running.len(), Ordering::Relaxed);
    }

    /// Starts requests for one model: sessions from the pool, shared prefixes computed
    /// once, then each joins the batch (or gets its error).
    fn start_group(&mut self, name: &str, group: &[&(ChatRequest, UnboundedSender<ChatEvent>)]) {
        let Ok(served) = self.local.served(name) else {
            for (_, events) in group {
                if let Err(e) = self.local.served(name) {
                    let _ = events.send(ChatEvent::Done(Err(e)));
                }
            }
            return;
        };
        let model = &served.model;
        // Requests that fail to tokenize or to build their steering answer at once.
        let mut ready = Vec::new();
        for (req, events) in group.iter().map(|g| (&g.0, &g.1)) {
            let prepared = encode(model, &req.prompt).and_then(|p| {
                req.sampling.validate()?;
                Ok((p, self.local.steering_for(served, &req.steer)?))
            });
            match prepared {
                Ok((p, s)) => ready.push((req, events, p, s)),
                Err(e) => {
                    let _ = events.send(ChatEvent::Done(Err(e)));
                }
            }
        }
        let mut sessions = {
            let mut pool = served.pool.lock().unwrap_or_else(|p| p.into_inner());
            let mut out = Vec::new();
            for (_, events, p, s) in &ready {
                match self.local.take_session(served, &mut pool, p, s.as_deref()) {
                    Ok(mut session) => {
                        session.set_steering(s.clone());
                        out.push(Some(session));
                    }
                    Err(e) => {
                        let _ = events.send(ChatEvent::Done(Err(e)));
                        out.push(None);
                    }
                }
            }
            out
        };
        let keep: Vec<bool> = sessions.iter().map(Option::is_some).collect();
        let mut ready: Vec<_> = ready
            .into_iter()
            .zip(&keep)
            .filter(|(_, k)| **k)
            .map(|(r, _)| r)
            .collect();
        let mut sessions: Vec<_> = sessions.drain(..).flatten().collect();
        let prompts: Vec<Vec<u32>> = ready.iter().map(|r| r.2.clone()).collect();
        let shared = match share_prefixes(model, &mut sessions, &prompts) {
            Ok(s) => s,
            Err(e) => {
                let msg = e.to_string();
                for (_, events, _, _) in &ready {
                    let _ = events.send(ChatEvent::Done(Err(Error::Engine(msg.clone()))));
                }
                served.give_back(sessions);
                return;
            }
        };
        for ((session, (req, events, prompt, steering)), shared) in
            sessions.into_iter().zip(ready.drain(..)).zip(shared)
        {
            let greq = generate_request(req, prompt, steering);
            let sink = Box::new(ChannelSink(events.clone()));
            match Sequence::new(model, session, greq, sink) {
                Ok(seq) => {
                    self.stats.admitted.fetch_add(1, Ordering::Relaxed);
                    self.running.push(Running {
                        model: name.to_string(),
                        seq,
                        shared,
                        events: events.clone(),
                    });
                }
                Err(e) => {
                    let _ = events.send(ChatEvent::Done(Err(e)));
                }
            }
        }
    }

    /// One forward pass per model with running sequences, then retires the finished.
    fn step(&mut self) {
        if self.running.is_empty() {
            return;
        }
        let t0 = Instant::now();
        for name in super::models_in_order(self.running.iter().map(|r| r.model.as_str())) {
            let Ok(served) = self.local.served(&name) else {
                continue;
            };
            let (mut mine, rest): (Vec<Running>, Vec<Running>) = std::mem::take(&mut self.running)
                .into_iter()
                .partition(|r| r.model == name);
            self.running = rest;
            let rows = mine.iter().filter(|r| !r.seq.is_done()).count() as u64;
            let outcome = {
                let mut seqs: Vec<&mut Sequence> = mine.iter_mut().map(|r| &mut r.seq).collect();
                step(&served.model, &mut seqs)
            };
            self.stats.steps.fetch_add(1, Ordering::Relaxed);
            self.stats.step_rows.fetch_add(rows, Ordering::Relaxed);
            if let Err(e) = outcome {
                // A failed pass fails every sequence in it; their sessions are dropped.
                let msg = e.to_string();
                for r in mine {
                    let _ = r
                        .events
                        .send(ChatEvent::Done(Err(Error::Engine(msg.clone()))));
                }
                continue;
            }
            for r in mine {
                if !r.seq.is_done() {
                    self.running.push(r);
                    continue;
                }
                let (result, session) = r.seq.finish(&served.model);
                served.give_back([session]);
                let result = result.map(|g| completion(g, r.shared));
                if let Ok(c) = &result {
                    self.stats
                        .prompt_tokens
                        .fetch_add(c.prompt_tokens as u64, Ordering::Relaxed);
                    self.stats
                        .generated_tokens
                        .fetch_add(c.generated_tokens as u64, Ordering::Relaxed);
                    if c.finish_reason == FinishReason::Cancelled {
                        self.stats.cancelled.fetch_add(1, Ordering::Relaxed);
                    }
                }
                let _ = r.events.send(ChatEvent::Done(result));
            }
        }
        self.stats
            .running
            .store(self.running.len(), Ordering::Relaxed);
        self.stats
            .busy_us
            .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
    }
}
