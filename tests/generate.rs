//! `pathos generate`, `chat` and `bench` end to end on the real default model.

mod common;

use std::io::Write;
use std::process::Stdio;

use common::{model, pathos, pathos_cmd, stderr, stdout};
use pathos::engine::generate::{FinishReason, GenerateRequest, generate};
use pathos::engine::sampler::SamplingParams;

fn json_of(args: &[&str]) -> serde_json::Value {
    let o = pathos(args);
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", stdout(&o)))
}

#[test]
fn same_seed_same_bytes_and_other_seed_differs() {
    let args = |seed: &'static str| {
        vec![
            "generate",
            "--temperature",
            "1.0",
            "--seed",
            seed,
            "-n",
            "40",
            "Write one sentence about the sea.",
        ]
    };
    let a = pathos(&args("7"));
    let b = pathos(&args("7"));
    let c = pathos(&args("8"));
    assert!(a.status.success(), "{}", stderr(&a));
    assert!(!a.stdout.is_empty());
    assert_eq!(a.stdout, b.stdout, "same seed, different output");
    assert_ne!(a.stdout, c.stdout, "different seeds, same output");
}

#[test]
fn json_reports_text_reason_counts_and_timings() {
    let v = json_of(&[
        "generate",
        "--json",
        "--temperature",
        "0",
        "-n",
        "8",
        "Say hello.",
    ]);
    assert_eq!(v["model"], "smollm2-135m");
    assert!(!v["text"].as_str().unwrap().is_empty());
    assert!(matches!(
        v["finish_reason"].as_str().unwrap(),
        "length" | "eos"
    ));
    assert!(v["prompt_tokens"].as_u64().unwrap() > 5);
    assert!(v["generated_tokens"].as_u64().unwrap() <= 8);
    for k in [
        "load_ms",
        "prompt_tokens_per_second",
        "generation_tokens_per_second",
    ] {
        assert!(v["timings"][k].as_f64().unwrap() > 0.0, "{k}");
    }
}

#[test]
fn greedy_answers_a_simple_question() {
    let v = json_of(&[
        "generate",
        "--json",
        "--temperature",
        "0",
        "-n",
        "24",
        "What is the capital of Germany?",
    ]);
    assert!(v["text"].as_str().unwrap().contains("Berlin"), "{v}");
}

#[test]
fn stop_string_ends_generation_and_is_not_printed() {
    // Greedy continuation of this prompt contains " Paris"; stop on a string that spans tokens.
    let free = json_of(&[
        "generate",
        "--json",
        "--raw",
        "--temperature",
        "0",
        "-n",
        "16",
        "The capital of France is",
    ]);
    let text = free["text"].as_str().unwrap();
    let at = text.find("aris").expect("greedy text mentions Paris");
    let v = json_of(&[
        "generate",
        "--json",
        "--raw",
        "--temperature",
        "0",
        "-n",
        "16",
        "--stop",
        "aris",
        "The capital of France is",
    ]);
    assert_eq!(v["finish_reason"], "stop");
    assert_eq!(v["text"].as_str().unwrap(), &text[..at]);
}

#[test]
fn raw_skips_the_template_and_system_changes_the_prompt() {
    let raw = json_of(&[
        "generate",
        "--json",
        "--raw",
        "--temperature",
        "0",
        "-n",
        "1",
        "Hello",
    ]);
    let chat = json_of(&[
        "generate",
        "--json",
        "--temperature",
        "0",
        "-n",
        "1",
        "Hello",
    ]);
    let sys = json_of(&[
        "generate",
        "--json",
        "--temperature",
        "0",
        "-n",
        "1",
        "--system",
        "You are a pirate.",
        "Hello",
    ]);
    assert_eq!(raw["prompt_tokens"], 1);
    assert!(chat["prompt_tokens"].as_u64() > raw["prompt_tokens"].as_u64());
    assert_ne!(sys["prompt_tokens"], chat["prompt_tokens"]);
}

#[test]
fn prompt_from_stdin() {
    let mut child = pathos_cmd(&["generate", "--json", "--temperature", "0", "-n", "4", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Name a color.")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success());
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(v["prompt_tokens"].as_u64().unwrap() > 3);
}

#[test]
fn chat_reuses_the_cache_across_turns() {
    let mut child = pathos_cmd(&["chat", "--show-stats", "--temperature", "0", "-n", "12"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"Hi, my name is Ada.\nWhat is my name?\n/reset\nHello again.\n/exit\n")
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let err = stderr(&o);
    let stats: Vec<(u64, u64)> = err
        .lines()
        .filter_map(|l| {
            let l = l.split("[prompt ").nth(1)?;
            let total: u64 = l.split(' ').next()?.parse().ok()?;
            let cached: u64 = l.split(", ").nth(1)?.split(' ').next()?.parse().ok()?;
            Some((total, cached))
        })
        .collect();
    assert_eq!(stats.len(), 3, "{err}");
    assert_eq!(stats[0].1, 0, "first turn has nothing cached");
    // Second turn: the whole first exchange (all but a few template tokens) is reused.
    assert!(stats[1].1 + 8 >= stats[0].0, "{stats:?}");
    assert!(
        stats[1].0 - stats[1].1 < 20,
        "second turn reprocessed too much: {stats:?}"
    );
    assert!(err.contains("conversation reset"));
    assert!(
        stats[2].1 < stats[1].1,
        "reset must drop the cache: {stats:?}"
    );
}

#[test]
fn bench_reports_llama_bench_columns() {
    let o = pathos(&["bench", "-p", "16", "-n", "8", "-r", "2", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let rows: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let tests: Vec<_> = rows
        .iter()
        .map(|r| r["test"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(tests, ["pp16", "tg8"]);
    for r in &rows {
        assert!(r["avg_ts"].as_f64().unwrap() > 0.0);
        assert_eq!(r["threads"], 2);
        assert_eq!(r["samples_ts"].as_array().unwrap().len(), 2);
        let gbs = r["mem_read_gbs"].as_f64().unwrap();
        assert!(gbs > 0.1 && gbs < 10_000.0, "memory read {gbs} GB/s");
    }
    let md = pathos(&["bench", "-p", "8", "-n", "0", "-r", "1"]);
    let md = stdout(&md);
    assert!(
        md.starts_with("| model | size | params | backend | threads | test | t/s |"),
        "{md}"
    );
    assert!(md.contains(" GB/s |"), "the memory read column: {md}");
}

#[test]
fn streaming_is_utf8_safe_and_matches_the_final_text() {
    let m = model("smollm2-135m");
    let prompt = m
        .template
        .render(
            &[pathos::engine::template::Message::new(
                "user",
                "Write three emoji and a word in Japanese.",
            )],
            true,
        )
        .unwrap();
    let ids = m.tokenizer.encode(&prompt, true).unwrap();
    let mut session = m.new_session().unwrap();
    let mut streamed = String::new();
    let req = GenerateRequest {
        prompt: ids,
        sampling: SamplingParams {
            seed: 3,
            ..SamplingParams::default()
        },
        max_tokens: 48,
        stop: vec![],
        constraint: None,
        steering: None,
        logprobs: None,
    };
    let g = generate(&m, &mut session, &req, &mut |s: &str| {
        streamed.push_str(s);
        true
    })
    .unwrap();
    assert_eq!(streamed, g.text);
    // A character the length limit cut in half ends the text as U+FFFD (its bytes
    // never came); inside the text, one would mean the stream split a character.
    let whole = match g.finish_reason {
        FinishReason::Length => g.text.trim_end_matches('\u{FFFD}'),
        _ => g.text.as_str(),
    };
    assert!(!whole.contains('\u{FFFD}'), "{:?}", g.text);
    assert_eq!(g.text, m.tokenizer.decode(&g.tokens).unwrap());
    assert_ne!(g.finish_reason, FinishReason::Cancelled);
}

#[test]
fn all_three_architectures_generate_sensible_text() {
    for (name, prompt, word) in [
        ("smollm2-135m", "The capital of France is", "Paris"),
        ("gemma3-270m", "Paris is the capital of", "France"),
        ("qwen2.5-coder-0.5b", "def add(a, b):\n    return", "a"),
    ] {
        let v = json_of(&[
            "generate",
            "-m",
            name,
            "--json",
            "--raw",
            "--temperature",
            "0",
            "-n",
            "12",
            prompt,
        ]);
        assert!(v["text"].as_str().unwrap().contains(word), "{name}: {v}");
    }
}
