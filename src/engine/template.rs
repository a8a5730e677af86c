//! Chat templates: the model's own Jinja template from `tokenizer.chat_template`,
//! rendered with minijinja the way Hugging Face's `apply_chat_template` renders it
//! (trim_blocks, lstrip_blocks, `raise_exception`, `strftime_now`, `tojson`, Python
//! string methods). A model without a template gets a built-in one chosen by its
//! vocabulary: Gemma's turn markers when it has them, ChatML otherwise.

use minijinja::{Environment, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

const CHATML: &str = include_str!("templates/chatml.jinja");
const GEMMA: &str = include_str!("templates/gemma.jinja");

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    /// A message with the given role.
    pub fn new(role: &str, content: impl Into<String>) -> Self {
        Self {
            role: role.to_string(),
            content: content.into(),
        }
    }
}

/// Where the template in use came from, for `models info` and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TemplateSource {
    Model,
    ChatMl,
    Gemma,
}

/// Least output [`ChatTemplate::render`] allows: far more than any context window holds.
pub const MAX_RENDERED: usize = 64 << 20;

/// Collects rendered output and fails once it passes `cap` bytes (minijinja reports a
/// failed write without its message, hence `over`).
struct CappedWriter {
    buf: Vec<u8>,
    cap: usize,
    over: bool,
}

impl std::io::Write for CappedWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        if self.buf.len() + b.len() > self.cap {
            self.over = true;
            return Err(std::io::ErrorKind::OutOfMemory.into());
        }
        self.buf.extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A compiled chat template with the BOS/EOS texts it may print.
pub struct ChatTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
    source: TemplateSource,
}

fn raise_exception(msg: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, msg))
}

fn strftime_now(format: String) -> String {
    // Templates use this only for "today's date" lines; pathos renders them in UTC with
    // the few directives such templates use.
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let days = (secs / 86_400) as i64;
    // Civil-from-days (proleptic Gregorian), to avoid a date crate for one call.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    const MONTHS: [&str; 12] = [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ];
    format
        .replace("%Y", &y.to_string())
        .replace("%m", &format!("{m:02}"))
        .replace("%d", &format!("{d:02}"))
        .replace("%B", MONTHS[(m - 1) as usize])
        .replace("%b", &MONTHS[(m - 1) as usize][..3])
}

impl ChatTemplate {
    /// Compiles `source` (the model's template), or the built-in fallback when `None`.
    /// `has_gemma_turns` picks the Gemma fallback for vocabularies with its markers.
    pub fn new(source: Option<&str>, bos: &str, eos: &str, has_gemma_turns: bool) -> Result<Self> {
        let (text, kind) = match source {
            Some(s) => (s.to_string(), TemplateSource::Model),
            None if has_gemma_turns => (GEMMA.to_string(), TemplateSource::Gemma),
            None => (CHATML.to_string(), TemplateSource::ChatMl),
        };
        let mut env = Environment::new();
        let syntax = minijinja::syntax::SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| Error::Template(e.to_string()))?;
        env.set_syntax(syntax);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_function("strftime_now", strftime_now);
        env.add_template_owned("chat", text)
            .map_err(|e| Error::Template(format!("the template does not compile: {e}")))?;
        Ok(Self {
            env,
            bos: bos.to_string(),
            eos: eos.to_string(),
            source: kind,
        })
    }

    /// Where this template came from.
    pub fn source(&self) -> TemplateSource {
        self.source
    }

    /// Renders a conversation; `add_generation_prompt` opens the assistant's turn.
    ///
    /// The output is capped at [`MAX_RENDERED`] or four times the messages' size,
    /// whichever is larger: a template that loops over large strings fails with an error
    /// instead of filling memory. (It bounds output, not time: minijinja's fuel would
    /// bound the work, and needs its `fuel` feature.)
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let tmpl = self
            .env
            .get_template("chat")
            .map_err(|e| Error::Template(e.to_string()))?;
        let input: usize = messages
            .iter()
            .map(|m| m.role.len() + m.content.len())
            .sum();
        let mut out = CappedWriter {
            buf: Vec::new(),
            cap: MAX_RENDERED.max(input.saturating_mul(4)),
            over: false,
        };
        tmpl.render_captured_to(
            context! {
                messages => Value::from(messages.iter().map(|m| context! { role => m.role.as_str(), content => m.content.as_str() }).collect::<Vec<Value>>()),
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos.as_str(),
                eos_token => self.eos.as_str(),
            },
            &mut out,
        )
        .map_err(|e| {
            Error::Template(if out.over {
                format!(
                    "rendering failed: the output passed {} MiB; the template repeats text without bound",
                    out.cap >> 20
                )
            } else {
                format!("rendering failed: {e}")
            })
        })?;
        // minijinja writes whole `str`s, so the bytes are UTF-8.
        String::from_utf8(out.buf).map_err(|e| Error::Template(format!("rendering failed: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn convo() -> Vec<Message> {
        vec![
            Message::new("system", "Be brief."),
            Message::new("user", "Hi"),
            Message::new("assistant", "Hello."),
            Message::new("user", "Bye"),
        ]
    }

    #[test]
    fn chatml_fallback_renders_turns_and_generation_prompt() {
        let t = ChatTemplate::new(None, "", "", false).unwrap();
        assert_eq!(t.source(), TemplateSource::ChatMl);
        let out = t.render(&convo(), true).unwrap();
        assert_eq!(
            out,
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n\
             <|im_start|>assistant\nHello.<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n\
             <|im_start|>assistant\n"
        );
    }

    #[test]
    fn gemma_fallback_folds_system_into_first_user_turn() {
        let t = ChatTemplate::new(None, "<bos>", "<eos>", true).unwrap();
        let out = t.render(&convo(), true).unwrap();
        assert_eq!(
            out,
            "<bos><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n\
             Hello.<end_of_turn>\n<start_of_turn>user\nBye<end_of_turn>\n<start_of_turn>model\n"
        );
    }

    #[test]
    fn raise_exception_becomes_a_template_error() {
        let t = ChatTemplate::new(
            Some("{{ raise_exception('no system role') }}"),
            "",
            "",
            false,
        )
        .unwrap();
        let e = t.render(&convo(), true).unwrap_err().to_string();
        assert!(e.contains("no system role"), "{e}");
    }

    #[test]
    fn output_explosion_is_an_error_not_an_oom() {
        // 100 000 × 1 000 bytes = 100 MB, over the cap: refused at the cap, not built.
        let t = ChatTemplate::new(
            Some("{% for i in range(100000) %}{{ 'x' * 1000 }}{% endfor %}"),
            "",
            "",
            false,
        )
        .unwrap();
        let e = t.render(&convo(), false).unwrap_err().to_string();
        assert!(e.contains("the output passed 64 MiB"), "{e}");
    }

    #[test]
    fn huge_range_is_refused_not_run() {
        let t = ChatTemplate::new(
            Some("{% for i in range(999999999) %}.{% endfor %}"),
            "",
            "",
            false,
        )
        .unwrap();
        let e = t.render(&convo(), false).unwrap_err().to_string();
        assert!(e.contains("range has too many elements"), "{e}");
    }

    #[test]
    fn unbounded_macro_recursion_is_an_error() {
        let t = ChatTemplate::new(
            Some("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}"),
            "",
            "",
            false,
        )
        .unwrap();
        let e = t.render(&convo(), false).unwrap_err().to_string();
        assert!(e.contains("recursion"), "{e}");
    }

    #[test]
    fn python_string_methods_work() {
        let t = ChatTemplate::new(
            Some("{% for m in messages %}{{ m.content.strip().upper() }}|{% endfor %}"),
            "",
            "",
            false,
        )
        .unwrap();
        assert_eq!(
            t.render(&[Message::new("user", "  hi ")], false).unwrap(),
            "HI|"
        );
    }
}
