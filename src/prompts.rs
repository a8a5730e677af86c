//! Prompt templates (minijinja), kept as files beside the code that uses them.
//!
//! Every prompt pathos sends is one of these templates rendered with named values, so
//! the wording can be read and changed in one place and shows up whole in transcripts.

use std::sync::OnceLock;

use minijinja::Environment;

const TEMPLATES: &[(&str, &str)] = &[
    ("detect", include_str!("emotion/prompts/detect.jinja")),
    ("write", include_str!("debate/prompts/write.jinja")),
    ("revise", include_str!("debate/prompts/revise.jinja")),
    ("critique", include_str!("debate/prompts/critique.jinja")),
    ("crit", include_str!("debate/prompts/crit.jinja")),
    ("pick", include_str!("debate/prompts/pick.jinja")),
    (
        "synthesize",
        include_str!("debate/prompts/synthesize.jinja"),
    ),
    ("features", include_str!("debate/prompts/features.jinja")),
    ("ethics-code", include_str!("ethics/prompts/code.jinja")),
    ("ethics-direct", include_str!("ethics/prompts/direct.jinja")),
    (
        "ethics-example",
        include_str!("ethics/prompts/example.jinja"),
    ),
    ("ethics-rule", include_str!("ethics/prompts/rule.jinja")),
    ("argue", include_str!("debate/prompts/argue.jinja")),
    ("concede", include_str!("debate/prompts/concede.jinja")),
];

fn env() -> &'static Environment<'static> {
    static ENV: OnceLock<Environment<'static>> = OnceLock::new();
    ENV.get_or_init(|| {
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .expect("default delimiters are valid");
        env.set_syntax(syntax);
        for (name, source) in TEMPLATES {
            env.add_template(name, source)
                .unwrap_or_else(|e| panic!("prompt template `{name}` is invalid: {e}"));
        }
        env
    })
}

/// Renders the named prompt with `values`. The templates ship with the crate and are
/// checked by the tests, so a failure here is a bug in pathos, reported as text rather
/// than a panic.
pub fn render(name: &str, values: minijinja::Value) -> String {
    match env().get_template(name).and_then(|t| t.render(values)) {
        Ok(s) => s.trim().to_string(),
        Err(e) => format!("(prompt `{name}` failed to render: {e})"),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_template_compiles() {
        for (name, _) in super::TEMPLATES {
            assert!(super::env().get_template(name).is_ok(), "{name}");
        }
    }
}
