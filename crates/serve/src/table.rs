//! Which model versions exist, in which state, and which one a request goes to.
//!
//! The watcher threads write this table; request handlers only read it: they resolve a model spec to a
//! [`ServableModel`] (an `Arc`, so a version unloaded mid-request finishes that request) and report
//! TF Serving's `ModelVersionStatus` list.

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Instant;

use runtime::Model;

use crate::batch::{BatchQueue, JobError, JobResult};
use crate::error::ServeError;

/// TF Serving's `ModelVersionStatus.State`, with its proto numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VersionState {
    /// Seen on disk, not yet loading.
    Start = 10,
    /// Being verified, compiled and warmed up.
    Loading = 20,
    /// Serving requests.
    Available = 30,
    /// Finishing in-flight requests before release.
    Unloading = 40,
    /// Unloaded, or failed to load (then with an error).
    End = 50,
}

impl VersionState {
    /// The enum name TF prints in status JSON.
    pub fn name(self) -> &'static str {
        match self {
            VersionState::Start => "START",
            VersionState::Loading => "LOADING",
            VersionState::Available => "AVAILABLE",
            VersionState::Unloading => "UNLOADING",
            VersionState::End => "END",
        }
    }
}

/// One version's status as GetModelStatus reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct VersionStatus {
    /// Version number.
    pub version: u64,
    /// Lifecycle state.
    pub state: VersionState,
    /// `Ok` unless loading failed, or an AVAILABLE version's files or base path went bad while it kept
    /// serving (`DATA_LOSS`, `UNAVAILABLE`).
    pub error_code: tonic::Code,
    /// What went wrong; empty when nothing did.
    pub error_message: String,
}

/// How a request names a version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionChoice {
    /// The highest available version.
    Latest,
    /// A version number.
    Number(u64),
    /// A label from the model config (`stable` -> 42).
    Label(String),
}

/// A loaded, warmed-up model version and its batching queue.
pub(crate) struct ServableModel {
    pub(crate) name: String,
    pub(crate) version: u64,
    pub(crate) model: Arc<Model>,
    /// The artifact's content digest as verified at load, so a deployment can say which content it runs.
    pub(crate) content_digest: String,
    queue: BatchQueue,
}

impl ServableModel {
    pub(crate) fn new(
        name: String,
        version: u64,
        model: Arc<Model>,
        content_digest: String,
        queue: BatchQueue,
    ) -> Self {
        ServableModel { name, version, model, content_digest, queue }
    }

    /// Most instances one request may carry; larger requests are refused.
    pub(crate) fn max_instances(&self) -> usize {
        self.queue.capacity()
    }

    /// Runs a request's instances through the batch queue; still queued at `deadline`, they never run.
    pub(crate) async fn predict(&self, inputs: Vec<Vec<u8>>, deadline: Option<Instant>) -> JobResult {
        let receiver = self.queue.submit(inputs, deadline).map_err(JobError::Request)?;
        receiver.await.unwrap_or_else(|_| {
            Err(JobError::Request(ServeError::Internal(format!(
                "model {} version {} stopped before answering (the engine panicked)",
                self.name, self.version
            ))))
        })
    }
}

struct VersionEntry {
    status: VersionStatus,
    servable: Option<Arc<ServableModel>>,
}

#[derive(Default)]
struct ModelEntry {
    labels: BTreeMap<String, u64>,
    versions: BTreeMap<u64, VersionEntry>,
}

/// Every configured model and its versions.
#[derive(Default)]
pub(crate) struct ModelTable {
    models: RwLock<BTreeMap<String, ModelEntry>>,
}

impl ModelTable {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, ModelEntry>> {
        self.models.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, ModelEntry>> {
        self.models.write().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers a model (no versions yet) or replaces the labels of a registered one.
    pub(crate) fn add_model(&self, name: &str, labels: BTreeMap<String, u64>) {
        self.write().entry(name.to_owned()).or_default().labels = labels;
    }

    /// Forgets a model that is no longer configured (after its versions were unloaded).
    pub(crate) fn remove_model(&self, name: &str) {
        self.write().remove(name);
    }

    /// Records a version's state; `error` is set only for failed loads.
    pub(crate) fn set_state(
        &self,
        name: &str,
        version: u64,
        state: VersionState,
        error: Option<(tonic::Code, String)>,
    ) {
        let mut models = self.write();
        let entry = models.entry(name.to_owned()).or_default();
        let (error_code, error_message) = error.unwrap_or((tonic::Code::Ok, String::new()));
        let status = VersionStatus { version, state, error_code, error_message };
        match entry.versions.get_mut(&version) {
            Some(existing) => {
                existing.status = status;
                if state != VersionState::Available {
                    existing.servable = None;
                }
            }
            None => {
                entry.versions.insert(version, VersionEntry { status, servable: None });
            }
        }
    }

    /// Sets (or clears, with `None`) the error of a version that stays AVAILABLE: a fault found after it
    /// loaded is reported without taking the verified in-memory copy out of routing. Versions in any
    /// other state are left alone, so a late report cannot overwrite an unload or a failed load.
    pub(crate) fn set_serving_error(&self, name: &str, version: u64, error: Option<(tonic::Code, String)>) {
        let mut models = self.write();
        let Some(entry) = models.get_mut(name).and_then(|m| m.versions.get_mut(&version)) else {
            return;
        };
        if entry.status.state == VersionState::Available {
            (entry.status.error_code, entry.status.error_message) =
                error.unwrap_or((tonic::Code::Ok, String::new()));
        }
    }

    /// Makes a loaded version AVAILABLE.
    pub(crate) fn publish(&self, servable: Arc<ServableModel>) {
        let mut models = self.write();
        let entry = models.entry(servable.name.clone()).or_default();
        let status = VersionStatus {
            version: servable.version,
            state: VersionState::Available,
            error_code: tonic::Code::Ok,
            error_message: String::new(),
        };
        entry.versions.insert(servable.version, VersionEntry { status, servable: Some(servable) });
    }

    /// Takes a version out of routing (state UNLOADING) and returns it, so the caller can wait for its
    /// in-flight requests before dropping it.
    pub(crate) fn retire(&self, name: &str, version: u64) -> Option<Arc<ServableModel>> {
        let mut models = self.write();
        let entry = models.get_mut(name)?.versions.get_mut(&version)?;
        entry.status.state = VersionState::Unloading;
        entry.servable.take()
    }

    /// The versions of `name` in `state`, ascending.
    pub(crate) fn versions_in(&self, name: &str, state: VersionState) -> Vec<u64> {
        self.read().get(name).map_or_else(Vec::new, |m| {
            m.versions.values().filter(|v| v.status.state == state).map(|v| v.status.version).collect()
        })
    }

    /// The status of a version, if it was ever seen.
    pub(crate) fn version_status(&self, name: &str, version: u64) -> Option<VersionStatus> {
        self.read().get(name)?.versions.get(&version).map(|v| v.status.clone())
    }

    /// The serving version a request goes to, with TF Serving's errors.
    pub(crate) fn resolve(
        &self,
        name: &str,
        choice: &VersionChoice,
    ) -> Result<Arc<ServableModel>, ServeError> {
        let models = self.read();
        let model = models.get(name);
        let (version, request) = match choice {
            VersionChoice::Latest => {
                let latest = model.and_then(|m| m.versions.values().rev().find_map(|v| v.servable.clone()));
                return latest.ok_or_else(|| {
                    ServeError::NotFound(format!("Servable not found for request: Latest({name})"))
                });
            }
            VersionChoice::Number(v) => (*v, format!("Specific({name}, {v})")),
            VersionChoice::Label(label) => {
                let version = model.and_then(|m| m.labels.get(label)).copied().ok_or_else(|| {
                    ServeError::InvalidArgument(format!("Unrecognized servable version label: {label}"))
                })?;
                (version, format!("Specific({name}, {version})"))
            }
        };
        model
            .and_then(|m| m.versions.get(&version))
            .and_then(|v| v.servable.clone())
            .ok_or_else(|| ServeError::NotFound(format!("Servable not found for request: {request}")))
    }

    /// GetModelStatus: every version known (newest first, as TF's monitor orders them), or one.
    pub(crate) fn status(
        &self,
        name: &str,
        choice: &VersionChoice,
    ) -> Result<Vec<VersionStatus>, ServeError> {
        let models = self.read();
        let model = models
            .get(name)
            .filter(|m| !m.versions.is_empty())
            .ok_or_else(|| ServeError::NotFound(format!("Could not find any versions of model {name}")))?;
        let version = match choice {
            VersionChoice::Latest => {
                return Ok(model.versions.values().rev().map(|v| v.status.clone()).collect());
            }
            VersionChoice::Number(v) => *v,
            VersionChoice::Label(label) => *model.labels.get(label).ok_or_else(|| {
                ServeError::InvalidArgument(format!("Unrecognized servable version label: {label}"))
            })?,
        };
        model
            .versions
            .get(&version)
            .map(|v| vec![v.status.clone()])
            .ok_or_else(|| ServeError::NotFound(format!("Could not find version {version} of model {name}")))
    }

    /// For each model, whether at least one version is AVAILABLE.
    pub(crate) fn readiness(&self) -> Vec<(String, bool)> {
        self.read()
            .iter()
            .map(|(name, m)| {
                (name.clone(), m.versions.values().any(|v| v.status.state == VersionState::Available))
            })
            .collect()
    }
}
