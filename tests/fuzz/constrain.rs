//! Fuzz target of constrained decoding: the JSON schemas a client sends as
//! `response_format`, lark grammars and choice lists, compiled into a [`Guide`] over the
//! tiny vocabulary and walked for a few tokens.

use std::sync::OnceLock;

use pathos::engine::constrain::{Constraint, Grammars};
use proptest::prelude::*;
use serde_json::{Value, json};

use crate::harness::fuzz;

fn grammars() -> &'static Grammars {
    static G: OnceLock<Grammars> = OnceLock::new();
    G.get_or_init(|| {
        let t = crate::tokenizer::tiny_bpe();
        Grammars::new(t, t.vocab_size()).unwrap()
    })
}

/// Strings llguidance reads as regexes, formats and names, including hostile ones.
fn pattern() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(
            &[
                "^[a-z]+$",
                "(a|b)*c",
                "a{1000}",
                "(a{100}){100}",
                "((a*)*)*b",
                "[",
                "(?P<x>a)",
                "\\p{L}+",
                "\\d{3}-\\d{4}",
                "(",
                "a{2,1}",
                ".*",
                "",
            ][..]
        )
        .prop_map(str::to_string),
        "[a-z()\\[\\]{}*+?|.^$\\\\0-9,]{0,12}",
    ]
}

/// JSON schemas built from the keywords llguidance implements, with odd values.
fn schema() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        prop::sample::select(
            &[
                "string", "integer", "number", "boolean", "null", "object", "array", "date"
            ][..]
        )
        .prop_map(|t| json!({"type": t})),
        pattern().prop_map(|p| json!({"type": "string", "pattern": p})),
        (any::<u32>(), any::<u32>())
            .prop_map(|(a, b)| json!({"type": "string", "minLength": a % 64, "maxLength": b})),
        (any::<i64>(), any::<i64>())
            .prop_map(|(a, b)| json!({"type": "integer", "minimum": a, "maximum": b})),
        (any::<f64>(), 0.0f64..10.0)
            .prop_map(|(a, m)| json!({"type": "number", "minimum": a, "multipleOf": m})),
        prop::collection::vec("[a-z\"\\\\]{0,6}", 0..4).prop_map(|e| json!({"enum": e})),
        "[a-z]{0,6}".prop_map(|c| json!({"const": c})),
        prop::sample::select(&["email", "uri", "date-time", "uuid", "bogus"][..])
            .prop_map(|f| json!({"type": "string", "format": f})),
        Just(json!({"$ref": "#/$defs/missing"})),
        Just(json!({"$ref": "#"})),
        Just(json!(true)),
        Just(json!(false)),
        Just(json!({})),
        Just(json!(null)),
        Just(json!(42)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            (prop::collection::btree_map("[a-z]{1,4}", inner.clone(), 0..4), any::<bool>(), any::<bool>())
                .prop_map(|(props, req, extra)| {
                    let keys: Vec<String> = props.keys().cloned().collect();
                    json!({
                        "type": "object",
                        "properties": props,
                        "required": if req { keys } else { vec![] },
                        "additionalProperties": extra,
                    })
                }),
            (inner.clone(), any::<u32>(), any::<u32>()).prop_map(|(items, a, b)| {
                json!({"type": "array", "items": items, "minItems": a % 8, "maxItems": b})
            }),
            prop::collection::vec(inner.clone(), 0..3).prop_map(|v| json!({"anyOf": v})),
            prop::collection::vec(inner.clone(), 0..3).prop_map(|v| json!({"oneOf": v})),
            prop::collection::vec(inner.clone(), 0..3).prop_map(|v| json!({"allOf": v})),
            inner.clone().prop_map(|d| json!({"$defs": {"a": d}, "$ref": "#/$defs/a"})),
            inner.prop_map(|d| json!({"$defs": {"a": {"anyOf": [d, {"$ref": "#/$defs/a"}]}}, "$ref": "#/$defs/a"})),
        ]
    })
}

/// Lark grammars in llguidance's dialect, from pieces.
fn lark() -> impl Strategy<Value = String> {
    let piece = prop::sample::select(
        &[
            "start: ",
            "a",
            "b",
            " | ",
            "\"x\"",
            "\"\"",
            "/[0-9]+/",
            "/(/",
            "%json {}",
            "%ignore ",
            "start",
            "(",
            ")",
            "*",
            "+",
            "?",
            "~",
            "1..3",
            "\n",
            "r: ",
            " r",
            "A: \"q\"",
            " A",
            "%import",
            "<[1]>",
            "@sub",
            "%llguidance {}",
        ][..],
    );
    prop::collection::vec(piece, 0..20).prop_map(|v| v.concat())
}

fn constraint() -> impl Strategy<Value = Constraint> {
    prop_oneof![
        4 => schema().prop_map(Constraint::JsonSchema),
        2 => lark().prop_map(Constraint::Lark),
        1 => prop::collection::vec(any::<String>(), 0..4).prop_map(Constraint::Choice),
    ]
}

/// Client-sent constraints (JSON schemas with hostile patterns, recursive `$ref`s, huge
/// bounds; lark grammars; choice lists) compile to a guide or an error, and a guide
/// walks a few tokens, each allowed by its own mask, to the end or to an error, without
/// panicking. Defends the
/// server against `response_format` bodies that would crash or hang generation.
#[test]
fn guide() {
    let input = (constraint(), prop::collection::vec(any::<u16>(), 0..8));
    fuzz("constrain::guide", input, |(c, picks)| {
        let mut guide = match grammars().guide(c) {
            Ok(g) => g,
            Err(e) => {
                prop_assert!(!e.to_string().is_empty());
                return Ok(());
            }
        };
        let vocab = crate::tokenizer::tiny_bpe().vocab_size();
        for pick in picks {
            if guide.is_finished() {
                break;
            }
            let mut logits = vec![0.0f32; vocab];
            if guide.mask(&mut logits).is_err() {
                break;
            }
            let allowed: Vec<u32> = (0..vocab as u32)
                .filter(|&i| logits[i as usize].is_finite())
                .collect();
            prop_assert!(!allowed.is_empty());
            let tok = allowed[*pick as usize % allowed.len()];
            // llguidance may refuse even an allowed token when the grammar passes one of
            // its resource limits ("Too many items"): an error, which ends the answer.
            if let Err(e) = guide.accept(tok) {
                prop_assert!(!e.to_string().is_empty());
                break;
            }
        }
        Ok(())
    });
}
