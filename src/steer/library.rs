//! Where control vectors are found: the user's own (`pathos steer train` writes them
//! under `$PATHOS_HOME/steer/MODEL/SPECTRUM.gguf`) first, then the ones shipped in the
//! crate for the default model. A vector is used only with the model it was learned on.

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::SteerError;
use super::vector::ControlVector;
use crate::emotion::beam::Beam;
use crate::engine::model::Model;
use crate::engine::registry::{Manifest, pathos_home};

/// Vectors shipped with pathos: (model, spectrum, file bytes).
const SHIPPED: &[(&str, &str, &[u8])] = &[
    (
        "smollm2-135m",
        "fear-courage",
        include_bytes!("vectors/smollm2-135m/fear-courage.gguf"),
    ),
    (
        "smollm2-135m",
        "sadness-joy",
        include_bytes!("vectors/smollm2-135m/sadness-joy.gguf"),
    ),
    (
        "smollm2-135m",
        "distrust-trust",
        include_bytes!("vectors/smollm2-135m/distrust-trust.gguf"),
    ),
    (
        "smollm2-135m",
        "negligence-anticipation",
        include_bytes!("vectors/smollm2-135m/negligence-anticipation.gguf"),
    ),
    (
        "smollm2-135m",
        "anger-peace",
        include_bytes!("vectors/smollm2-135m/anger-peace.gguf"),
    ),
    (
        "smollm2-135m",
        "disgust-delight",
        include_bytes!("vectors/smollm2-135m/disgust-delight.gguf"),
    ),
    (
        "smollm2-135m",
        "disinterest-fascination",
        include_bytes!("vectors/smollm2-135m/disinterest-fascination.gguf"),
    ),
];

/// Root of the user's vectors: `$PATHOS_STEER_DIR`, else `$PATHOS_HOME/steer`.
pub fn user_root() -> PathBuf {
    match std::env::var_os("PATHOS_STEER_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => pathos_home().join("steer"),
    }
}

/// Directory of the user's vectors for `model`.
pub fn user_dir(model: &str) -> PathBuf {
    user_root().join(model)
}

/// The vector shipped in the crate for (`model`, `spectrum`), if there is one.
pub fn shipped(model: &str, spectrum: &str) -> Option<Result<ControlVector, SteerError>> {
    SHIPPED
        .iter()
        .find(|(m, s, _)| *m == model && *s == spectrum)
        .map(|(m, s, bytes)| read_shipped(bytes, &format!("shipped {m}/{s}")))
}

/// The user's vector file for (`model`, `spectrum`), where `train` writes it.
pub fn user_path(model: &str, spectrum: &str) -> PathBuf {
    user_dir(model).join(format!("{spectrum}.gguf"))
}

/// sha256 of a model's file: the manifest's (checked when it was fetched) for a model
/// given by name, else computed.
pub fn model_sha256(model: &Model) -> Result<String, SteerError> {
    if let Ok(m) = Manifest::builtin()
        && let Some(e) = m.get(&model.name)
        && e.size == model.info.file_size
    {
        return Ok(e.sha256.clone());
    }
    Ok(crate::engine::fetch::sha256_file(&model.info.path)?)
}

/// One vector as `steer list` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Listed {
    pub model: String,
    pub spectrum: String,
    /// `user` or `shipped`.
    pub origin: String,
    pub path: Option<PathBuf>,
    pub layers: String,
    pub calibrated: bool,
    pub pairs: usize,
    pub created: String,
}

fn read_shipped(bytes: &[u8], label: &str) -> Result<ControlVector, SteerError> {
    ControlVector::read_from(std::io::Cursor::new(bytes), label)
}

/// Every vector pathos can find, the user's first.
pub fn list() -> Vec<Listed> {
    let mut out = Vec::new();
    let root = user_root();
    if let Ok(models) = std::fs::read_dir(&root) {
        let mut models: Vec<_> = models.flatten().collect();
        models.sort_by_key(|e| e.file_name());
        for m in models {
            let Ok(files) = std::fs::read_dir(m.path()) else {
                continue;
            };
            let mut files: Vec<_> = files.flatten().collect();
            files.sort_by_key(|e| e.file_name());
            for f in files {
                if let Ok(v) = ControlVector::read(&f.path()) {
                    out.push(listed(
                        &v,
                        &m.file_name().to_string_lossy(),
                        "user",
                        Some(f.path()),
                    ));
                }
            }
        }
    }
    for (model, spectrum, bytes) in SHIPPED {
        if let Ok(v) = read_shipped(bytes, &format!("shipped {model}/{spectrum}")) {
            out.push(listed(&v, model, "shipped", None));
        }
    }
    out
}

fn listed(v: &ControlVector, model: &str, origin: &str, path: Option<PathBuf>) -> Listed {
    let layers = v.layers();
    Listed {
        model: model.to_string(),
        spectrum: v.provenance.spectrum.clone(),
        origin: origin.into(),
        path,
        layers: match (layers.first(), layers.last()) {
            (Some(a), Some(b)) => format!("{a}..{b}"),
            _ => String::new(),
        },
        calibrated: v.calibration.is_some(),
        pairs: v.provenance.pairs,
        created: v.provenance.created.clone(),
    }
}

/// The vector for `spectrum` on `model`: the user's, else the shipped one. Checks that
/// it was learned on this very model file.
pub fn find(model: &Model, beam: &Beam, spectrum: &str) -> Result<ControlVector, SteerError> {
    beam.find_spectrum(spectrum)
        .map_err(|e| SteerError::Spectrum(e.to_string()))?;
    let user = user_path(&model.name, spectrum);
    let v = if user.exists() {
        ControlVector::read(&user)?
    } else if let Some(v) = shipped(&model.name, spectrum) {
        v?
    } else {
        return Err(SteerError::NoVector {
            model: model.name.clone(),
            spectrum: spectrum.to_string(),
        });
    };
    check_fits(&v, model, &user)?;
    Ok(v)
}

/// Reads a vector file given by path and checks it against `model`.
pub fn open(model: &Model, path: &Path) -> Result<ControlVector, SteerError> {
    let v = ControlVector::read(path)?;
    check_fits(&v, model, path)?;
    Ok(v)
}

/// A vector learned on another model is refused: its width or depth, or its recorded
/// model hash, says so.
pub fn check_fits(v: &ControlVector, model: &Model, path: &Path) -> Result<(), SteerError> {
    let cfg = model.transformer.config();
    let label = path.display().to_string();
    if v.n_embd != cfg.n_embd || v.directions.len() > cfg.n_layer {
        return Err(SteerError::WrongModel {
            path: label,
            why: format!(
                "it is {} wide over {} layers; {} is {} wide over {} layers",
                v.n_embd,
                v.directions.len().saturating_sub(1),
                model.name,
                cfg.n_embd,
                cfg.n_layer
            ),
        });
    }
    if !v.provenance.model_sha256.is_empty() {
        let sha = model_sha256(model)?;
        if sha != v.provenance.model_sha256 {
            return Err(SteerError::WrongModel {
                path: label,
                why: format!(
                    "it was learned on a model file with sha256 {}…, and {} has {}…",
                    &v.provenance.model_sha256[..12.min(v.provenance.model_sha256.len())],
                    model.name,
                    &sha[..12.min(sha.len())]
                ),
            });
        }
    }
    Ok(())
}
