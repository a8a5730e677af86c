//! Stop strings, matched on decoded text.
//!
//! [`StopBuffer`] sits between the token decoder and the output. It holds back the tail of
//! the text that could still turn into a stop string, so a stop string split across
//! tokens ("<|im" + "_end|>") is never partly printed.

/// Text waiting to be released, and the stop strings it is checked against.
#[derive(Debug, Default)]
pub struct StopBuffer {
    stops: Vec<String>,
    pending: String,
    /// The text of the latest release (kept, so releasing allocates nothing).
    released: String,
}

/// What [`StopBuffer::push`] found.
#[derive(Debug, PartialEq, Eq)]
pub struct Released<'a> {
    /// Text safe to print.
    pub text: &'a str,
    /// A stop string was reached; `text` ends just before it.
    pub stopped: bool,
}

impl StopBuffer {
    /// A buffer for these stop strings (empty ones are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
            released: String::new(),
        }
    }

    /// Adds decoded text and releases what can no longer be part of a stop string.
    pub fn push(&mut self, delta: &str) -> Released<'_> {
        self.pending.push_str(delta);
        self.released.clear();
        let first = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()))
            .min();
        if let Some(at) = first {
            self.released.push_str(&self.pending[..at]);
            self.pending.clear();
            return Released {
                text: &self.released,
                stopped: true,
            };
        }
        let hold = self.held_back_len();
        let cut = self.pending.len() - hold;
        self.released.push_str(&self.pending[..cut]);
        self.pending.drain(..cut);
        Released {
            text: &self.released,
            stopped: false,
        }
    }

    /// Releases whatever is still held (the generation ended without a stop string).
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }

    /// Length of the longest tail of `pending` that begins some stop string.
    fn held_back_len(&self) -> usize {
        let p = &self.pending;
        let mut best = 0;
        for s in &self.stops {
            let max = (s.len() - 1).min(p.len());
            for len in (best + 1..=max).rev() {
                let start = p.len() - len;
                if p.is_char_boundary(start) && s.starts_with(&p[start..]) {
                    best = len;
                    break;
                }
            }
        }
        best
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], deltas: &[&str]) -> (String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut b = StopBuffer::new(&stops);
        let mut out = String::new();
        for d in deltas {
            let r = b.push(d);
            out.push_str(r.text);
            if r.stopped {
                return (out, true);
            }
        }
        out.push_str(&b.finish());
        (out, false)
    }

    #[test]
    fn stop_split_across_tokens_never_leaks() {
        assert_eq!(
            run(&["STOP"], &["hello S", "T", "OP world"]),
            ("hello ".into(), true)
        );
    }

    #[test]
    fn near_miss_is_released() {
        assert_eq!(run(&["STOP"], &["a ST", "AR"]), ("a STAR".into(), false));
    }

    #[test]
    fn earliest_of_several_stops_wins() {
        assert_eq!(run(&["\n\n", "END"], &["xEND y\n\n"]), ("x".into(), true));
    }

    #[test]
    fn held_text_is_released_progressively() {
        let mut b = StopBuffer::new(&["ab".to_string()]);
        assert_eq!(b.push("xa").text, "x");
        assert_eq!(b.push("c").text, "ac");
    }

    #[test]
    fn multibyte_text_is_cut_on_char_boundaries() {
        assert_eq!(run(&["é!"], &["café", "é", "?"]), ("caféé?".into(), false));
    }
}
