//! Fuzz targets of the OpenAI request parsers of `pathos serve`: the body bytes of
//! `POST /v1/chat/completions` and `/v1/completions` through `parse_chat` /
//! `parse_completion` and `to_request`, exactly as the routes call them.

use pathos::server::ApiError;
use pathos::server::openai::{parse_chat, parse_completion};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};

use crate::harness::fuzz;

/// A refusal must be a client error with a message, never a 5xx.
fn client_error(e: &ApiError) -> Result<(), TestCaseError> {
    prop_assert!(e.status.is_client_error(), "status {} for {e:?}", e.status);
    prop_assert!(!e.message.trim().is_empty(), "empty message: {e:?}");
    Ok(())
}

/// Runs a chat body through the route's steps; `Ok(true)` when it was accepted.
fn chat(body: &[u8]) -> Result<bool, TestCaseError> {
    match parse_chat(body).and_then(|r| r.to_request("m", 4096)) {
        Ok(_) => Ok(true),
        Err(e) => client_error(&e).map(|_| false),
    }
}

fn completion(body: &[u8]) -> Result<bool, TestCaseError> {
    match parse_completion(body).and_then(|r| r.to_request("m")) {
        Ok(_) => Ok(true),
        Err(e) => client_error(&e).map(|_| false),
    }
}

/// Any JSON value, nesting included, with the numbers that break conversions.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        prop::sample::select(&[0.0, -0.0, 1e308, -1e308, 2.0000001, 1e-320, 0.5][..])
            .prop_map(Value::from),
        any::<String>().prop_map(Value::from),
        "[a-z:+\\-.0-9]{0,16}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 16, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A message content: a string, text parts, or parts of other types.
fn content() -> impl Strategy<Value = Value> {
    prop_oneof![
        any::<String>().prop_map(Value::from),
        "[{}%# a-z<|>]{0,24}".prop_map(Value::from),
        prop::collection::vec(any::<String>(), 0..3).prop_map(|v| Value::Array(
            v.into_iter()
                .map(|t| json!({"type": "text", "text": t}))
                .collect()
        )),
        Just(json!([{"type": "image_url", "image_url": {"url": "x"}}])),
        Just(Value::Null),
    ]
}

fn role() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => prop::sample::select(&["system", "developer", "user", "assistant"][..]).prop_map(str::to_string),
        1 => prop::sample::select(&["tool", "function", "", "USER"][..]).prop_map(str::to_string),
        1 => any::<String>(),
    ]
}

/// Values for the sampling and option fields, mostly in range, some not.
fn field(key: &'static str) -> BoxedStrategy<Value> {
    let f = |lo: f64, hi: f64| (lo..hi).prop_map(Value::from).boxed();
    match key {
        "temperature" => prop_oneof![f(0.0, 2.0), f(-1.0, 5.0)].boxed(),
        "top_p" | "min_p" => prop_oneof![f(0.0, 1.0), f(-1.0, 2.0)].boxed(),
        "repeat_penalty" => f(-1.0, 3.0),
        "top_k" | "max_tokens" | "max_completion_tokens" | "top_logprobs" | "n" => prop_oneof![
            6 => (0u64..40).prop_map(Value::from),
            1 => any::<u64>().prop_map(Value::from),
            1 => Just(json!(-1)),
        ]
        .boxed(),
        // A bool for chat, a count for completions: each endpoint gets both.
        "logprobs" => prop_oneof![
            any::<bool>().prop_map(Value::from),
            (0u64..30).prop_map(Value::from),
        ]
        .boxed(),
        "seed" => any::<u64>().prop_map(Value::from).boxed(),
        "stop" => prop_oneof![
            "[a-z\\n]{0,4}".prop_map(Value::from),
            prop::collection::vec("[a-z\\n]{0,4}", 0..6).prop_map(Value::from),
        ]
        .boxed(),
        "stream" | "echo" => any::<bool>().prop_map(Value::from).boxed(),
        "stream_options" => any::<bool>()
            .prop_map(|b| json!({"include_usage": b}))
            .boxed(),
        "steer" => prop::collection::vec(
            prop_oneof![
                prop::sample::select(
                    &[
                        "sadness-joy:+0.6",
                        "joy-sadness:-1",
                        "anger-peace:0",
                        "scale:sadness-joy:2.5",
                        "scale:fear-courage:NaN",
                        "scale:fear-courage:1e999",
                        "sadness-joy:",
                        ":",
                        "scale:",
                        "nonsense:+0.6",
                    ][..]
                )
                .prop_map(str::to_string),
                any::<String>(),
            ],
            0..3,
        )
        .prop_map(Value::from)
        .boxed(),
        "response_format" => prop_oneof![
            Just(json!({"type": "text"})),
            Just(json!({"type": "json_object"})),
            any_json().prop_map(
                |s| json!({"type": "json_schema", "json_schema": {"name": "x", "schema": s}})
            ),
            Just(json!({"type": "json_schema"})),
            Just(json!({"type": "xml"})),
        ]
        .boxed(),
        _ => any_json().boxed(),
    }
}

const CHAT_FIELDS: &[&str] = &[
    "model",
    "temperature",
    "top_p",
    "min_p",
    "top_k",
    "repeat_penalty",
    "seed",
    "stop",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "stream",
    "stream_options",
    "logprobs",
    "top_logprobs",
    "response_format",
    "steer",
    "user",
    "frequency_penalty",
];

/// A chat body: messages plus a random subset of the known fields, an unknown one now
/// and then, and now and then a field replaced by any JSON value at all.
fn chat_value() -> impl Strategy<Value = Value> {
    let message = (role(), content()).prop_map(|(r, c)| json!({"role": r, "content": c}));
    let fields = prop::collection::vec(
        prop::sample::select(CHAT_FIELDS).prop_flat_map(|k| field(k).prop_map(move |v| (k, v))),
        0..6,
    );
    let wild = prop::option::weighted(
        0.2,
        (
            prop::sample::select(&["messages", "model", "temperature", "stop", "x"][..]),
            any_json(),
        ),
    );
    (prop::collection::vec(message, 0..5), fields, wild).prop_map(|(msgs, fields, wild)| {
        let mut o = serde_json::Map::new();
        o.insert("messages".into(), Value::Array(msgs));
        for (k, v) in fields {
            o.insert(k.into(), v);
        }
        if let Some((k, v)) = wild {
            o.insert(k.into(), v);
        }
        Value::Object(o)
    })
}

/// A change to a body's bytes.
#[derive(Clone, Debug)]
enum Edit {
    Flip(Index, u8),
    Truncate(Index),
    Insert(Index, &'static str),
    Delete(Index, u8),
}

fn edited(mut b: Vec<u8>, edits: &[Edit]) -> Vec<u8> {
    for e in edits {
        if b.is_empty() {
            break;
        }
        match e {
            Edit::Flip(i, bit) => {
                let at = i.index(b.len());
                b[at] ^= 1 << bit;
            }
            Edit::Truncate(i) => b.truncate(i.index(b.len())),
            Edit::Insert(i, s) => {
                let at = i.index(b.len() + 1);
                b.splice(at..at, s.bytes());
            }
            Edit::Delete(i, n) => {
                let at = i.index(b.len());
                b.drain(at..(at + *n as usize).min(b.len()));
            }
        }
    }
    b
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let frag = prop::sample::select(
        &[
            "\"",
            "{",
            "}",
            "[",
            "]",
            ",",
            ":",
            "null",
            "1e999",
            "-0",
            "\\u0000",
            "\\ud800",
            "\\udfff\\ud800",
            "\u{feff}",
            "\"messages\":[]",
            "\"role\":\"user\"",
            "\"content\":",
            "\"stream\":true,",
            " ",
            "\n",
        ][..],
    );
    prop::collection::vec(
        prop_oneof![
            (any::<Index>(), 0u8..8).prop_map(|(i, b)| Edit::Flip(i, b)),
            any::<Index>().prop_map(Edit::Truncate),
            (any::<Index>(), frag).prop_map(|(i, s)| Edit::Insert(i, s)),
            (any::<Index>(), 1u8..16).prop_map(|(i, n)| Edit::Delete(i, n)),
        ],
        0..3,
    )
}

/// Bodies as a client or an attacker sends them: random bytes, deep nesting, and
/// well-formed requests with odd values, then byte edits.
fn body(value: BoxedStrategy<Value>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => prop::collection::vec(any::<u8>(), 0..256),
        1 => (1usize..5000, prop::sample::select(&["[", "{\"a\":", "{\"messages\":["][..]))
            .prop_map(|(n, s)| s.repeat(n).into_bytes()),
        // Half of the requests intact, so that checks past the JSON syntax run too.
        6 => (value, prop::option::of(edits())).prop_map(|(v, e)| {
            edited(serde_json::to_vec(&v).unwrap(), e.as_deref().unwrap_or_default())
        }),
    ]
}

/// Chat bodies (random bytes, nesting bombs, mutated OpenAI requests) get an accepted
/// request or a 4xx with a message, never a panic or a 5xx. Defends the server's
/// request parsing against malformed and hostile clients.
#[test]
fn chat_body() {
    fuzz("http::chat_body", body(chat_value().boxed()), |b| {
        chat(b).map(|_| ())
    });
}

/// Completions bodies, the same way.
#[test]
fn completion_body() {
    let value = (
        prop_oneof![
            any::<String>().prop_map(Value::from),
            prop::collection::vec(any::<String>(), 0..3).prop_map(Value::from),
            any_json(),
        ],
        prop::collection::vec(
            prop::sample::select(&CHAT_FIELDS[..CHAT_FIELDS.len() - 1])
                .prop_flat_map(|k| field(k).prop_map(move |v| (k, v))),
            0..6,
        ),
        any::<bool>(),
    )
        .prop_map(|(prompt, fields, echo)| {
            let mut o = serde_json::Map::new();
            o.insert("prompt".into(), prompt);
            for (k, v) in fields {
                o.insert(k.into(), v);
            }
            if echo {
                o.insert("echo".into(), json!(true));
            }
            Value::Object(o)
        });
    fuzz("http::completion_body", body(value.boxed()), |b| {
        completion(b).map(|_| ())
    });
}

/// A well-formed chat request is accepted, and each message reaches the engine with its
/// role and text unchanged (the last one as the answer's prefix when it is the
/// assistant's). Defends against a parser that refuses or rewrites valid requests.
#[test]
fn chat_valid_roundtrip() {
    let msgs = prop::collection::vec(
        (
            prop::sample::select(&["system", "user", "assistant"][..]),
            any::<String>(),
            any::<bool>(),
        ),
        1..5,
    );
    fuzz("http::chat_valid_roundtrip", msgs, |msgs| {
        let body = json!({
            "model": "m",
            "messages": msgs.iter().map(|(r, t, parts)| if *parts {
                json!({"role": r, "content": [{"type": "text", "text": t}]})
            } else {
                json!({"role": r, "content": t})
            }).collect::<Vec<_>>(),
            "temperature": 0.7,
            "stop": ["\n\n"],
        });
        let bytes = serde_json::to_vec(&body).unwrap();
        let only_assistant = msgs.len() == 1 && msgs[0].0 == "assistant";
        let req = parse_chat(&bytes).and_then(|r| r.to_request("m", 4096));
        let req = match req {
            Ok(r) => r,
            // Only an answer's start with no message before it is refused.
            Err(e) if only_assistant => return client_error(&e),
            Err(e) => return Err(TestCaseError::fail(format!("refused: {e:?}"))),
        };
        let mut want: Vec<(&str, &str)> = msgs.iter().map(|(r, t, _)| (*r, t.as_str())).collect();
        let mut prefix = "";
        if want.last().is_some_and(|(r, _)| *r == "assistant") {
            prefix = want.pop().unwrap().1;
        }
        let got: Vec<(&str, &str)> = req
            .prompt
            .messages
            .iter()
            .map(|m| (m.role.as_str(), m.content.as_str()))
            .collect();
        prop_assert_eq!(got, want);
        prop_assert_eq!(req.prompt.prefix.as_str(), prefix);
        Ok(())
    });
}
