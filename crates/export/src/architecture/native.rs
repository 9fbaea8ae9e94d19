//! What every native architecture shares: its hyper-parameters parsed from `config.json`, checked once
//! against the input size, and kept with the weights until the graph is wired. A family is one
//! [`NativeConfig`] implementation; [`open`] and [`Native`] are written once for all of them.

use std::path::Path;

use serde::de::DeserializeOwned;
use tract_core::internal::*;

use super::{Architecture, InputSize};
use crate::config::ModelConfig;
use crate::graph::GraphWiring;
use crate::weights::Weights;
use crate::{ExportError, Precision};

/// A native family's `config.json` hyper-parameters: how they are checked and how they wire the logits.
pub trait NativeConfig: DeserializeOwned + 'static {
    /// What checking the config for one input size yields (an activation, a feed-forward block, a layout)
    /// for [`NativeConfig::logits`] to use.
    type Checked: 'static;

    /// The precisions [`NativeConfig::logits`] can build.
    const PRECISIONS: &'static [Precision];

    /// Checks the config against `input`, refusing what transformers would not run; the reason names the
    /// field at fault.
    fn validate(&self, input: InputSize) -> Result<Self::Checked, String>;

    /// Wires `model` from `pixel_values` (`f32[N, 3, H, W]`) to its logits (`f32[N, classes]`).
    fn logits(
        model: &Native<Self>,
        g: &mut GraphWiring,
        pixel_values: OutletId,
        precision: Precision,
    ) -> TractResult<OutletId>;
}

/// A native architecture: its checked config and its weights, for one input size.
pub struct Native<C: NativeConfig> {
    /// The hyper-parameters from `config.json`.
    pub config: C,
    /// What [`NativeConfig::validate`] derived from them for `input`.
    pub checked: C::Checked,
    /// The graph's input size.
    pub input: InputSize,
    /// Classes, as many as `config.json`'s `id2label` names.
    pub classes: usize,
    /// The checkpoint's weights.
    pub weights: Weights,
}

/// Parses `C` from `config` (read from `config_path`) and checks it against `input`.
pub fn open<C: NativeConfig>(
    config: &ModelConfig,
    config_path: &Path,
    weights: Weights,
    input: InputSize,
) -> Result<Box<dyn Architecture>, ExportError> {
    let parsed: C = config.parse(config_path)?;
    let checked = parsed
        .validate(input)
        .map_err(|reason| ExportError::InvalidConfig { path: config_path.to_owned(), reason })?;
    Ok(Box::new(Native { config: parsed, checked, input, classes: config.id2label.len(), weights }))
}

impl<C: NativeConfig> Architecture for Native<C> {
    fn precisions(&self) -> &'static [Precision] {
        C::PRECISIONS
    }

    fn logits(
        &self,
        g: &mut GraphWiring,
        pixel_values: OutletId,
        precision: Precision,
    ) -> TractResult<OutletId> {
        C::logits(self, g, pixel_values, precision)
    }
}
