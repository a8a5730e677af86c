//! Shared helpers for the integration tests: the real models (fetched on first use into
//! the normal cache) and the `pathos` binary.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Mutex, OnceLock};

use pathos::engine::model::{LoadOptions, Model};
use pathos::engine::registry::{Manifest, resolve_model};

pub mod tiny_gguf;

/// Path of a manifest model, fetched if it is not cached yet.
pub fn model_path(name: &str) -> PathBuf {
    let manifest = Manifest::builtin().unwrap();
    resolve_model(&manifest, Some(name), false, false)
        .unwrap_or_else(|e| panic!("cannot get model {name}: {e}"))
        .path
}

/// A loaded manifest model, shared by the tests of one binary.
pub fn model(name: &str) -> Model {
    static MODELS: OnceLock<Mutex<Vec<(String, Model)>>> = OnceLock::new();
    let models = MODELS.get_or_init(|| Mutex::new(Vec::new()));
    let mut models = models.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((_, m)) = models.iter().find(|(n, _)| n == name) {
        return m.clone();
    }
    let manifest = Manifest::builtin().unwrap();
    let resolved = resolve_model(&manifest, Some(name), false, false).unwrap();
    let m = Model::load(&resolved, &LoadOptions::default()).unwrap();
    models.push((name.to_string(), m.clone()));
    m
}

/// The three models every capability is checked on.
pub const MODELS: [&str; 3] = ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"];

/// `pathos` with the given arguments, two threads, output captured.
pub fn pathos(args: &[&str]) -> Output {
    pathos_cmd(args).output().expect("running pathos")
}

/// A `pathos` command to adjust before running.
pub fn pathos_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pathos"));
    c.args(["-t", "2"]).args(args);
    c
}

/// Reads a JSON fixture from tests/fixtures.
pub fn fixture(rel: &str) -> serde_json::Value {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(rel);
    let text = std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    serde_json::from_str(&text).unwrap()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}
