//! `config.json` as Hugging Face writes it for image classifiers.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::ExportError;

/// What kiln reads from every checkpoint's `config.json`: which architecture it is and its labels. Each
/// architecture parses the rest (its hyper-parameters) from [`ModelConfig::raw`] itself, so the ONNX route
/// reads nothing else.
#[derive(Debug, Clone)]
pub struct ModelConfig {
    /// `architectures` (e.g. `["ConvNextForImageClassification"]`).
    pub architectures: Vec<String>,
    /// `model_type` (e.g. `convnext`), used when `architectures` is missing.
    pub model_type: Option<String>,
    /// Class index (as a decimal string) to label.
    pub id2label: BTreeMap<String, String>,
    /// The whole document.
    pub raw: serde_json::Value,
}

#[derive(Deserialize)]
struct ModelConfigKeys {
    #[serde(default)]
    architectures: Vec<String>,
    #[serde(default)]
    model_type: Option<String>,
    #[serde(default)]
    id2label: BTreeMap<String, String>,
}

impl ModelConfig {
    /// Reads `config.json` and checks that its labels are usable.
    pub fn read(path: &Path) -> Result<ModelConfig, ExportError> {
        let raw: serde_json::Value = read_json(path)?;
        let keys = ModelConfigKeys::deserialize(&raw)
            .map_err(|e| ExportError::InvalidConfig { path: path.to_owned(), reason: e.to_string() })?;
        let config = ModelConfig {
            architectures: keys.architectures,
            model_type: keys.model_type,
            id2label: keys.id2label,
            raw,
        };
        config.labels().map_err(|reason| ExportError::InvalidConfig { path: path.to_owned(), reason })?;
        Ok(config)
    }

    /// Labels indexed by class: `id2label` must cover `0..n` exactly once.
    pub fn labels(&self) -> Result<Vec<String>, String> {
        if self.id2label.is_empty() {
            return Err("id2label is missing or empty".into());
        }
        let mut labels = vec![None; self.id2label.len()];
        for (id, label) in &self.id2label {
            let index: usize = id.parse().map_err(|_| format!("id2label key {id:?} is not an integer"))?;
            let slot = labels.get_mut(index).ok_or_else(|| {
                format!("id2label key {index} is out of range for {} labels", self.id2label.len())
            })?;
            *slot = Some(label.clone());
        }
        Ok(labels.into_iter().map(|l| l.unwrap_or_default()).collect())
    }

    /// `architectures[0]`, else the `model_type`, for messages and provenance.
    pub fn architecture(&self) -> String {
        self.architectures
            .first()
            .cloned()
            .or_else(|| self.model_type.clone())
            .unwrap_or_else(|| "an unnamed architecture".into())
    }

    /// An architecture's own hyper-parameters, parsed from the whole document.
    pub fn parse<T: for<'de> Deserialize<'de>>(&self, path: &Path) -> Result<T, ExportError> {
        T::deserialize(&self.raw)
            .map_err(|e| ExportError::InvalidConfig { path: path.to_owned(), reason: e.to_string() })
    }
}

pub(crate) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<T, ExportError> {
    let text =
        std::fs::read_to_string(path).map_err(|source| ExportError::Io { path: path.to_owned(), source })?;
    serde_json::from_str(&text)
        .map_err(|e| ExportError::InvalidConfig { path: path.to_owned(), reason: e.to_string() })
}
