//! The one predict step every protocol calls: resolve the model version, plan the signature, take the
//! instances out of the decoded request, run them through the version's batch queue, and name a failed
//! instance in the protocol's words.
//!
//! Each protocol (TF Serving REST and gRPC, the Open Inference Protocol) decodes its wire format into a
//! [`PredictInput`] and encodes the [`Predicted`] it gets back; nothing here knows a wire format.

use std::sync::Arc;
use std::time::Instant;

use artifact::Manifest;
use runtime::Prediction;

use crate::batch::JobError;
use crate::error::ServeError;
use crate::signature::{OutputKind, SignaturePlan};
use crate::table::{ModelTable, ServableModel, VersionChoice};

/// A predict request as a protocol decoded it, before the model version is known.
pub(crate) trait PredictInput {
    /// The signature the request asks for.
    fn signature_name(&self) -> &str;

    /// The error for a signature the model does not have (each protocol words it its own way).
    fn missing_signature(&self) -> ServeError;

    /// The request's instance strings for `plan`; `max_instances` is the most the version takes.
    fn instances(&self, plan: &SignaturePlan, max_instances: usize) -> Result<Vec<Vec<u8>>, ServeError>;

    /// The outputs to return, in order; all of the signature's unless the request chose some.
    fn outputs(&self, plan: &SignaturePlan) -> Result<Vec<(String, OutputKind)>, ServeError> {
        Ok(plan.outputs.clone())
    }

    /// The error for instance `index`, which the engine could not decode.
    fn instance_error(&self, plan: &SignaturePlan, index: usize, error: String) -> ServeError;
}

/// What a predict step produced.
pub(crate) struct Predicted {
    /// The version that answered.
    pub(crate) servable: Arc<ServableModel>,
    /// The signature that ran.
    pub(crate) plan: SignaturePlan,
    /// The outputs the request gets, in order.
    pub(crate) outputs: Vec<(String, OutputKind)>,
    /// One prediction per instance, in order.
    pub(crate) predictions: Vec<Prediction>,
}

/// Resolves `name` at `choice` in `table` and runs `input` on it; instances still queued at `deadline`
/// never run.
pub(crate) async fn predict(
    table: &ModelTable,
    name: &str,
    choice: &VersionChoice,
    input: &impl PredictInput,
    deadline: Option<Instant>,
) -> Result<Predicted, ServeError> {
    let servable = table.resolve(name, choice)?;
    let plan = plan(servable.model.manifest(), input)?;
    let strings = input.instances(&plan, servable.max_instances())?;
    let outputs = input.outputs(&plan)?;
    let predictions = if strings.is_empty() {
        Vec::new()
    } else {
        servable.predict(strings, deadline).await.map_err(|error| match error {
            JobError::Instance { index, error } => input.instance_error(&plan, index, error.to_string()),
            JobError::Request(error) => error,
        })?
    };
    Ok(Predicted { servable, plan, outputs, predictions })
}

/// The signature `input` asks for in `manifest`.
pub(crate) fn plan(manifest: &Manifest, input: &impl PredictInput) -> Result<SignaturePlan, ServeError> {
    SignaturePlan::find(manifest, input.signature_name())?.ok_or_else(|| input.missing_signature())
}
