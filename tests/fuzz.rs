//! Property-based fuzz targets of the surfaces that take hostile input: GGUF files (and
//! everything built from their headers), text and token ids given to the tokenizers,
//! chat templates with the messages rendered through them, the HTTP request bodies of
//! `pathos serve`, and the constraints (JSON schemas, grammars) clients send with them.
//! Each target asserts that nothing panics and errors come back as errors, plus a
//! round-trip property where there is one. Findings are pinned in `regressions`.
//!
//! `cargo test --release --test fuzz` runs every target for `PATHOS_FUZZ_CASES` cases
//! (default 256); `scripts/fuzz.sh` runs each for a time budget and counts executions.
//! The environment variables are described in `fuzz/harness.rs`.

#[path = "fuzz/constrain.rs"]
mod constrain;
#[path = "fuzz/gguf.rs"]
mod gguf;
#[path = "fuzz/gguf_build.rs"]
mod gguf_build;
#[path = "fuzz/harness.rs"]
mod harness;
#[path = "fuzz/http.rs"]
mod http;
#[path = "fuzz/regressions.rs"]
mod regressions;
#[path = "fuzz/template.rs"]
mod template;
#[path = "fuzz/tokenizer.rs"]
mod tokenizer;
