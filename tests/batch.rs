//! Batched decoding on the real default model: several sequences decoded together give
//! each one the same tokens as decoding it alone, sequences that end early leave the
//! batch, and a prompt prefix shared by a batch is computed once and copied.

mod common;

use common::model;
use pathos::backend::local::LocalBackend;
use pathos::backend::{Backend, ChatRequest, Prompt};
use pathos::engine::generate::{FinishReason, GenerateRequest, Job, generate, generate_batch};
use pathos::engine::sampler::SamplingParams;
use pathos::engine::template::Message;

fn request(
    m: &pathos::engine::model::Model,
    user: &str,
    max_tokens: usize,
    seed: u64,
) -> GenerateRequest {
    let sampling = SamplingParams {
        seed,
        ..SamplingParams::default()
    };
    GenerateRequest {
        prompt: m.encode_chat(&[Message::new("user", user)], "").unwrap(),
        sampling,
        max_tokens,
        stop: vec![],
        constraint: None,
        steering: None,
        logprobs: None,
    }
}

#[test]
fn a_batch_gives_each_sequence_what_it_gets_alone() {
    let m = model("smollm2-135m");
    // Different prompt lengths, sampled (not greedy) so each sequence's own sampler and
    // seed are exercised, and different lengths so some leave the batch early.
    let reqs = [
        request(&m, "Name three colours.", 24, 1),
        request(
            &m,
            "Write one sentence about a cat who is afraid of the rain at night.",
            40,
            2,
        ),
        request(&m, "Say hello.", 6, 3),
        request(&m, "What is two plus two? Answer with a number.", 12, 4),
        request(&m, "Describe the sea in a few words.", 32, 5),
    ];
    let alone: Vec<_> = reqs
        .iter()
        .map(|r| {
            let mut s = m.new_session().unwrap();
            generate(&m, &mut s, r, &mut |_: &str| true).unwrap()
        })
        .collect();
    let mut sessions: Vec<_> = reqs.iter().map(|_| m.new_session().unwrap()).collect();
    let mut streamed = vec![String::new(); reqs.len()];
    let mut sinks: Vec<_> = streamed
        .iter_mut()
        .map(|s| {
            move |t: &str| {
                s.push_str(t);
                true
            }
        })
        .collect();
    let mut jobs: Vec<Job<'_>> = sessions
        .iter_mut()
        .zip(&reqs)
        .zip(sinks.iter_mut())
        .map(|((session, req), sink)| Job { session, req, sink })
        .collect();
    let together = generate_batch(&m, &mut jobs).unwrap();
    drop(jobs);
    drop(sinks);
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a.tokens, b.tokens, "sequence {i}");
        assert_eq!(a.text, b.text, "sequence {i}");
        assert_eq!(a.finish_reason, b.finish_reason, "sequence {i}");
        assert_eq!(streamed[i], b.text, "sequence {i}: streamed text");
    }
    // The short one really ended before the others.
    assert!(together[2].tokens.len() < together[1].tokens.len());
    for (s, r) in sessions
        .iter()
        .zip(&together)
        .zip(&reqs)
        .map(|((s, g), r)| (s, (g, r)))
    {
        let (g, r) = r;
        // Every generated token was fed back except the last one of a sequence cut by
        // length or a stop string; after an end-of-generation token all of them were.
        let fed = match g.finish_reason {
            FinishReason::Eos => g.tokens.len(),
            _ => g.tokens.len() - 1,
        };
        assert_eq!(s.tokens().len(), r.prompt.len() + fed);
    }
}

#[test]
fn agents_sharing_a_prompt_prefix_compute_it_once() {
    let m = model("smollm2-135m");
    let backend = LocalBackend::new(vec![("smollm2-135m".into(), m.clone())]);
    let shared = "You are one of four writers in a debate. Rewrite the text below so that it \
                  feels more joyful, keep its facts, and answer with the rewrite only.\n\n\
                  Text: The bus was late again and the rain did not stop all morning.";
    let reqs: Vec<ChatRequest> = (0..4)
        .map(|i| ChatRequest {
            model: "smollm2-135m".into(),
            prompt: Prompt::user(None, format!("{shared}\n\nWriter {i}, your draft:")),
            sampling: SamplingParams::greedy(),
            max_tokens: 16,
            stop: vec![],
            constraint: None,
            steer: vec![],
            logprobs: None,
        })
        .collect();
    let together = backend.chat(&reqs).unwrap();
    // Writers 1..3 found the shared part computed by writer 0.
    assert_eq!(together[0].cached_tokens, 0);
    for c in &together[1..] {
        assert!(
            c.cached_tokens >= 40,
            "copied only {} tokens",
            c.cached_tokens
        );
    }
    // And the answers are those of writers run one at a time on fresh sessions.
    for (r, c) in reqs.iter().zip(&together) {
        let fresh = LocalBackend::new(vec![("smollm2-135m".into(), m.clone())]);
        let alone = fresh.chat(std::slice::from_ref(r)).unwrap();
        assert_eq!(alone[0].text, c.text);
    }
}
