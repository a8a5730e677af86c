//! Control-vector files: one direction per layer for one emotion spectrum, in
//! llama.cpp's GGUF control-vector layout (`direction.N`, f32, added to layer N's
//! output), so `llama-cli --control-vector` reads pathos's files too. pathos adds its
//! provenance and its calibration (BEAM level → scale) as metadata under `pathos.`.

use std::io::{BufReader, BufWriter, Seek};
use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use serde::Serialize;

use super::SteerError;

/// Where a vector came from: enough to tell which model it belongs to and to learn it
/// again.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Provenance {
    /// sha256 of the GGUF file the directions were learned on.
    pub model_sha256: String,
    pub model_name: String,
    /// The model's architecture (llama.cpp's `controlvector.model_hint`).
    pub architecture: String,
    pub spectrum: String,
    pub pairs: usize,
    pub seed: u64,
    /// How directions were extracted (`mean-difference`).
    pub method: String,
    /// RFC 3339.
    pub created: String,
}

/// Scales at which the detector reads each BEAM level on steered generations.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    /// BEAM levels, ascending.
    pub levels: Vec<f64>,
    /// The scale for each level.
    pub scales: Vec<f64>,
    /// The scales tried and the mean detected level at each (the measured curve).
    pub grid: Vec<f64>,
    pub measured: Vec<f64>,
}

impl Calibration {
    /// The scale for `level`, interpolated between calibrated levels; `None` off their
    /// range.
    pub fn scale_for(&self, level: f64) -> Option<f64> {
        let (lv, sc) = (&self.levels, &self.scales);
        if lv.is_empty() || level < lv[0] - 1e-9 || level > lv[lv.len() - 1] + 1e-9 {
            return None;
        }
        for i in 0..lv.len() {
            if (lv[i] - level).abs() < 1e-9 {
                return Some(sc[i]);
            }
            if i + 1 < lv.len() && level > lv[i] && level < lv[i + 1] {
                let f = (level - lv[i]) / (lv[i + 1] - lv[i]);
                return Some(sc[i] + f * (sc[i + 1] - sc[i]));
            }
        }
        None
    }
}

/// One spectrum's directions for one model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ControlVector {
    /// Indexed by layer; layer 0 never has one (as in llama.cpp's format).
    #[serde(skip)]
    pub directions: Vec<Option<Vec<f32>>>,
    pub n_embd: usize,
    pub provenance: Provenance,
    pub calibration: Option<Calibration>,
}

fn string(v: &str) -> Value {
    Value::String(v.to_string())
}

fn f64s(v: &[f64]) -> Value {
    Value::Array(v.iter().map(|x| Value::F64(*x)).collect())
}

impl ControlVector {
    /// The layers that carry a direction.
    pub fn layers(&self) -> Vec<usize> {
        (0..self.directions.len())
            .filter(|&i| self.directions[i].is_some())
            .collect()
    }

    /// Writes the file atomically (a temporary file in the same directory, renamed over
    /// `path` once complete), so a crash never leaves half a vector behind.
    pub fn write(&self, path: &Path) -> Result<(), SteerError> {
        let io = |e: std::io::Error| SteerError::Io(path.display().to_string(), e);
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
        let dir = dir.unwrap_or_else(|| Path::new("."));
        std::fs::create_dir_all(dir).map_err(io)?;
        let p = &self.provenance;
        let layer_count = self.directions.len().saturating_sub(1) as u32;
        let mut meta: Vec<(&str, Value)> = vec![
            ("general.architecture", string("controlvector")),
            ("controlvector.model_hint", string(&p.architecture)),
            ("controlvector.layer_count", Value::U32(layer_count)),
            ("pathos.model_sha256", string(&p.model_sha256)),
            ("pathos.model_name", string(&p.model_name)),
            ("pathos.spectrum", string(&p.spectrum)),
            ("pathos.pairs", Value::U64(p.pairs as u64)),
            ("pathos.seed", Value::U64(p.seed)),
            ("pathos.method", string(&p.method)),
            ("pathos.created", string(&p.created)),
        ];
        if let Some(c) = &self.calibration {
            meta.push(("pathos.calibration.levels", f64s(&c.levels)));
            meta.push(("pathos.calibration.scales", f64s(&c.scales)));
            meta.push(("pathos.calibration.grid", f64s(&c.grid)));
            meta.push(("pathos.calibration.measured", f64s(&c.measured)));
        }
        let mut tensors = Vec::new();
        for (layer, dir) in self.directions.iter().enumerate() {
            if let Some(d) = dir {
                let t = Tensor::from_slice(d, d.len(), &Device::Cpu)?;
                tensors.push((
                    format!("direction.{layer}"),
                    QTensor::quantize(&t, GgmlDType::F32)?,
                ));
            }
        }
        let meta_refs: Vec<(&str, &Value)> = meta.iter().map(|(k, v)| (*k, v)).collect();
        let tensor_refs: Vec<(&str, &QTensor)> =
            tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
        let tmp = tempfile::NamedTempFile::new_in(dir).map_err(io)?;
        {
            let mut w = BufWriter::new(tmp.as_file());
            gguf_file::write(&mut w, &meta_refs, &tensor_refs)?;
            std::io::Write::flush(&mut w).map_err(io)?;
        }
        tmp.as_file().sync_all().map_err(io)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            // Vectors are shared data, not secrets (temporary files start private).
            tmp.as_file()
                .set_permissions(std::fs::Permissions::from_mode(0o644))
                .map_err(io)?;
        }
        tmp.persist(path).map_err(|e| io(e.error))?;
        Ok(())
    }

    /// Reads a control-vector file (pathos's, or llama.cpp's without provenance).
    pub fn read(path: &Path) -> Result<Self, SteerError> {
        let file =
            std::fs::File::open(path).map_err(|e| SteerError::Io(path.display().to_string(), e))?;
        Self::read_from(BufReader::new(file), &path.display().to_string())
    }

    /// Reads a control vector from any seekable source; `label` names it in errors.
    pub fn read_from<R: std::io::Read + Seek>(mut r: R, label: &str) -> Result<Self, SteerError> {
        let bad = |why: String| SteerError::BadFile(label.to_string(), why);
        let content = gguf_file::Content::read(&mut r).map_err(|e| bad(e.to_string()))?;
        let md = &content.metadata;
        let text = |k: &str| {
            md.get(k)
                .and_then(|v| v.to_string().ok())
                .cloned()
                .unwrap_or_default()
        };
        let num = |k: &str| md.get(k).and_then(|v| v.to_u64().ok()).unwrap_or(0);
        let floats = |k: &str| -> Option<Vec<f64>> {
            md.get(k)?
                .to_vec()
                .ok()?
                .iter()
                .map(|v| v.to_f64().ok())
                .collect()
        };
        let mut directions: Vec<Option<Vec<f32>>> = Vec::new();
        let mut n_embd = 0;
        let mut names: Vec<&String> = content.tensor_infos.keys().collect();
        names.sort();
        for name in names {
            let layer = name
                .strip_prefix("direction.")
                .and_then(|l| l.parse::<usize>().ok())
                .filter(|&l| l > 0)
                .ok_or_else(|| bad(format!("tensor `{name}` is not `direction.N` with N ≥ 1")))?;
            r.rewind()
                .map_err(|e| SteerError::Io(label.to_string(), e))?;
            let t = content
                .tensor(&mut r, name, &Device::Cpu)
                .map_err(|e| bad(e.to_string()))?;
            if t.dtype() != GgmlDType::F32 || t.shape().rank() != 1 {
                return Err(bad(format!("`{name}` is not a one-dimensional f32 tensor")));
            }
            let v = t.dequantize(&Device::Cpu)?.to_vec1::<f32>()?;
            if n_embd != 0 && v.len() != n_embd {
                return Err(bad(format!(
                    "`{name}` is {} wide, the others {n_embd}",
                    v.len()
                )));
            }
            n_embd = v.len();
            if directions.len() <= layer {
                directions.resize(layer + 1, None);
            }
            directions[layer] = Some(v);
        }
        if n_embd == 0 {
            return Err(bad("it holds no direction tensors".into()));
        }
        let calibration = match (
            floats("pathos.calibration.levels"),
            floats("pathos.calibration.scales"),
        ) {
            (Some(levels), Some(scales)) if levels.len() == scales.len() => Some(Calibration {
                levels,
                scales,
                grid: floats("pathos.calibration.grid").unwrap_or_default(),
                measured: floats("pathos.calibration.measured").unwrap_or_default(),
            }),
            _ => None,
        };
        Ok(Self {
            directions,
            n_embd,
            provenance: Provenance {
                model_sha256: text("pathos.model_sha256"),
                model_name: text("pathos.model_name"),
                architecture: text("controlvector.model_hint"),
                spectrum: text("pathos.spectrum"),
                pairs: num("pathos.pairs") as usize,
                seed: num("pathos.seed"),
                method: text("pathos.method"),
                created: text("pathos.created"),
            },
            calibration,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ControlVector {
        ControlVector {
            directions: vec![
                None,
                Some(vec![0.5, -1.0, 2.0]),
                None,
                Some(vec![1.0, 0.0, -0.25]),
            ],
            n_embd: 3,
            provenance: Provenance {
                model_sha256: "ab".repeat(32),
                model_name: "tiny".into(),
                architecture: "llama".into(),
                spectrum: "sadness-joy".into(),
                pairs: 32,
                seed: 7,
                method: "mean-difference".into(),
                created: "2026-11-29T00:00:00Z".into(),
            },
            calibration: Some(Calibration {
                levels: vec![-1.0, 0.0, 1.0],
                scales: vec![-4.0, 0.0, 3.0],
                grid: vec![-4.0, 0.0, 4.0],
                measured: vec![-0.9, 0.0, 1.1],
            }),
        }
    }

    #[test]
    fn a_vector_file_round_trips_with_its_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.gguf");
        let v = sample();
        v.write(&path).unwrap();
        let back = ControlVector::read(&path).unwrap();
        assert_eq!(back, v);
        assert_eq!(back.layers(), vec![1, 3]);
        // Only the finished file is left in the directory.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn calibration_interpolates_inside_its_levels_only() {
        let c = sample().calibration.unwrap();
        assert_eq!(c.scale_for(0.0), Some(0.0));
        assert_eq!(c.scale_for(1.0), Some(3.0));
        assert!((c.scale_for(0.5).unwrap() - 1.5).abs() < 1e-9);
        assert!((c.scale_for(-0.5).unwrap() + 2.0).abs() < 1e-9);
        assert_eq!(c.scale_for(1.2), None);
    }

    #[test]
    fn a_file_that_is_not_a_control_vector_is_refused_clearly() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.gguf");
        std::fs::write(&path, b"GGUF not really").unwrap();
        let err = ControlVector::read(&path).unwrap_err().to_string();
        assert!(err.contains("junk.gguf"), "{err}");
        let missing = ControlVector::read(&dir.path().join("none.gguf")).unwrap_err();
        assert!(missing.to_string().contains("none.gguf"));
    }
}
