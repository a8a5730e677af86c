//! Fuzz targets of the chat-template renderer: random and mutated template sources
//! (the built-in fallbacks and the three models' own templates from the fixtures), and
//! messages whose text looks like template code.

use std::sync::OnceLock;

use pathos::engine::template::{ChatTemplate, Message};
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

use crate::harness::fuzz;

/// Templates worth mutating: the fallbacks pathos ships and the models' own templates.
fn seeds() -> &'static [String] {
    static S: OnceLock<Vec<String>> = OnceLock::new();
    S.get_or_init(|| {
        let mut v = vec![
            include_str!("../../src/engine/templates/chatml.jinja").to_string(),
            include_str!("../../src/engine/templates/gemma.jinja").to_string(),
        ];
        for m in ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"] {
            let p = format!(
                "{}/tests/fixtures/template/{m}.json",
                env!("CARGO_MANIFEST_DIR")
            );
            let j: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
            // Gemma 3 270M has none (pathos falls back to gemma.jinja).
            v.extend(j["template"].as_str().map(str::to_string));
        }
        v
    })
}

/// Pieces of Jinja syntax to build random templates from. Numbers stay small: minijinja
/// bounds `range` and repetition but not nested loops over them (that needs its `fuel`
/// feature), so large ones would make slow-but-correct templates, not findings.
const PIECES: &[&str] = &[
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "#}",
    "{%-",
    "-%}",
    "{{-",
    "-}}",
    " for ",
    " in ",
    " endfor ",
    " if ",
    " elif ",
    " else ",
    " endif ",
    " set ",
    " macro ",
    " endmacro ",
    " call ",
    " endcall ",
    " filter ",
    " endfilter ",
    " raw ",
    " endraw ",
    " with ",
    " endwith ",
    " include ",
    " extends ",
    " block ",
    " endblock ",
    " import ",
    " break ",
    " continue ",
    " recursive ",
    "messages",
    "message",
    "m",
    "loop",
    "loop.index",
    "loop.cycle",
    "['role']",
    "['content']",
    ".content",
    ".role",
    "add_generation_prompt",
    "bos_token",
    "eos_token",
    "namespace(",
    "range(",
    "raise_exception(",
    "strftime_now(",
    "tojson",
    "|",
    "(",
    ")",
    "[",
    "]",
    ",",
    ":",
    ".",
    "~",
    "+",
    "-",
    "*",
    "**",
    "/",
    "//",
    "%",
    "==",
    "!=",
    "<",
    ">",
    "and",
    "or",
    "not",
    " is ",
    "defined",
    "none",
    "None",
    "true",
    "'",
    "\"",
    "'%Y-%m-%d'",
    "'x'",
    "3",
    "7",
    "-1",
    "0",
    "x",
    "y",
    "caller()",
    "self",
    "super()",
    "trim",
    "upper",
    "strip()",
    ".split(",
    "replace(",
    "length",
    "first",
    "last",
    "join",
    "items()",
    "attr(",
    "map(",
    "select(",
    "sort",
    "dictsort",
    "reverse",
    "batch(",
    "slice(",
    "\n",
    " ",
];

fn source() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        6 => prop::sample::select(PIECES).prop_map(str::to_string),
        1 => "[a-z_ ]{1,6}",
        1 => any::<char>().prop_map(String::from),
    ];
    prop::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

/// Message text that a template engine could mistake for code, and plain text.
fn content() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        any::<String>(),
        prop::sample::select(
            &[
                "{{ 7 * 7 }}",
                "{% for i in range(3) %}x{% endfor %}",
                "{{ raise_exception('boom') }}",
                "{# comment #}",
                "{%",
                "}}",
                "{{ messages }}",
                "{% raw %}",
                "<|im_end|>",
                "<end_of_turn>",
                "\n",
                " ",
            ][..]
        )
        .prop_map(str::to_string),
    ];
    prop::collection::vec(piece, 0..5).prop_map(|v| v.concat())
}

fn messages() -> impl Strategy<Value = Vec<Message>> {
    let role = prop_oneof![
        prop::sample::select(&["system", "user", "assistant", "tool", ""][..])
            .prop_map(str::to_string),
        any::<String>(),
    ];
    prop::collection::vec(
        (role, content()).prop_map(|(r, c)| Message::new(&r, c)),
        0..5,
    )
}

/// Compiles `src` and renders `msgs`: `Ok` or an error, never a panic.
fn compile_and_render(src: &str, msgs: &[Message], gen_prompt: bool) -> Result<(), TestCaseError> {
    match ChatTemplate::new(Some(src), "<s>", "</s>", false) {
        Ok(t) => {
            if let Err(e) = t.render(msgs, gen_prompt) {
                prop_assert!(!e.to_string().is_empty());
            }
        }
        Err(e) => prop_assert!(!e.to_string().is_empty()),
    }
    Ok(())
}

/// Random template sources built from Jinja syntax, rendered with random messages.
/// Defends against panics in template compilation and rendering of a model's template.
#[test]
fn random_source() {
    let input = (source(), messages(), any::<bool>());
    fuzz("template::random_source", input, |(src, msgs, gp)| {
        compile_and_render(src, msgs, *gp)
    });
}

/// An edit of a template's source.
#[derive(Clone, Debug)]
enum Edit {
    Delete(Index, u8),
    Duplicate(Index, u8),
    Insert(Index, &'static str),
    Truncate(Index),
}

fn edit(t: &str, e: &Edit) -> String {
    // Positions on char boundaries, so that every edit keeps valid UTF-8.
    let bounds: Vec<usize> = t.char_indices().map(|(i, _)| i).chain([t.len()]).collect();
    let at = |i: &Index| bounds[i.index(bounds.len())];
    let span = |i: &Index, n: u8| {
        let a = i.index(bounds.len());
        (bounds[a], bounds[(a + n as usize).min(bounds.len() - 1)])
    };
    match e {
        Edit::Delete(i, n) => {
            let (a, b) = span(i, *n);
            [&t[..a], &t[b..]].concat()
        }
        Edit::Duplicate(i, n) => {
            let (a, b) = span(i, *n);
            [&t[..b], &t[a..b], &t[b..]].concat()
        }
        Edit::Insert(i, p) => [&t[..at(i)], p, &t[at(i)..]].concat(),
        Edit::Truncate(i) => t[..at(i)].to_string(),
    }
}

/// The shipped fallbacks and the models' own templates with random edits (deleted,
/// duplicated and inserted syntax), rendered with random messages. Defends against
/// panics on templates that are almost right, the likeliest kind in a damaged file.
#[test]
fn mutated_real() {
    let edits = prop_oneof![
        (any::<Index>(), 1u8..24).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<Index>(), 1u8..48).prop_map(|(i, n)| Edit::Duplicate(i, n)),
        (any::<Index>(), prop::sample::select(PIECES)).prop_map(|(i, p)| Edit::Insert(i, p)),
        any::<Index>().prop_map(Edit::Truncate),
    ];
    let input = (
        any::<Index>(),
        prop::collection::vec(edits, 1..4),
        messages(),
        any::<bool>(),
    );
    fuzz(
        "template::mutated_real",
        input,
        |(which, edits, msgs, gp)| {
            let seeds = seeds();
            let mut src = seeds[which.index(seeds.len())].clone();
            for e in edits {
                src = edit(&src, e);
            }
            compile_and_render(&src, msgs, *gp)
        },
    );
}

/// A conversation every template accepts: an optional system turn, then user and
/// assistant alternating, ending with the user.
fn conversation() -> impl Strategy<Value = Vec<Message>> {
    (any::<bool>(), prop::collection::vec(content(), 1..4)).prop_map(|(system, turns)| {
        let mut v = Vec::new();
        if system {
            v.push(Message::new("system", "Be brief. {{ x }}"));
        }
        let n = turns.len();
        for (i, c) in turns.into_iter().enumerate() {
            // Odd counts end on the user; the last turn is always the user's.
            let role = if (n - 1 - i) % 2 == 0 {
                "user"
            } else {
                "assistant"
            };
            v.push(Message::new(role, c));
        }
        v
    })
}

/// Message text is data: through the ChatML fallback it comes out exactly as written,
/// and through the Gemma fallback and each model's own template every message's text
/// appears verbatim (trimmed, as the Gemma template trims it). Defends against template injection: a user
/// who writes `{{ … }}` or `{% … %}` must not run code or change the prompt's frame.
#[test]
fn content_is_data() {
    let chatml = ChatTemplate::new(None, "", "", false).unwrap();
    let models: Vec<ChatTemplate> = seeds()[1..]
        .iter()
        .map(|s| ChatTemplate::new(Some(s), "<bos>", "<eos>", false).unwrap())
        .collect();
    fuzz("template::content_is_data", conversation(), |msgs| {
        let out = chatml
            .render(msgs, true)
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let want: String = msgs
            .iter()
            .map(|m| format!("<|im_start|>{}\n{}<|im_end|>\n", m.role, m.content))
            .chain(["<|im_start|>assistant\n".to_string()])
            .collect();
        prop_assert_eq!(out, want);
        for t in &models {
            let out = t
                .render(msgs, true)
                .map_err(|e| TestCaseError::fail(e.to_string()))?;
            for m in msgs {
                prop_assert!(out.contains(m.content.trim()), "{:?} lost in {:?}", m, out);
            }
        }
        Ok(())
    });
}
