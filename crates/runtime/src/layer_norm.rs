//! `LayerNorm`: a layer norm read by several layers (a block's query, key and value) as one plan
//! operation.
//!
//! A norm read by one packed layer runs in that layer's prologue ([`crate::linear_fusion`]). With
//! several readers, tract's plan kept it as four nodes on the calling thread (row sum, `x - mean`,
//! the RMS normalization): on two threads, 2 ms of the int8 ViT-B/16's 31 ms per image, after which
//! the readers' second thread read its rows from the first core's cache. This operation normalizes
//! with the same arithmetic, so the same bits, on the rows each thread of the packed layers computes
//! ([`crate::packed_linear::by_rows`]). It exists only in optimized plans; artifacts keep the
//! graph's plain operations.

use tract_core::transform::ModelTransform;
use tract_nnef::internal::*;

use crate::linear_fusion::{self, Normalize};
use crate::packed_linear;

/// Normalizes each row of an f32 tensor over its last axis, as [`Normalize`] says.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct LayerNorm(Normalize);

impl Op for LayerNorm {
    fn name(&self) -> StaticName {
        "LayerNorm".into()
    }

    op_as_typed_op!();
}

/// Two norms are the same operation when they normalize alike (`mean_scale` and `eps` are never NaN).
impl Eq for LayerNorm {}

impl EvalOp for LayerNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = &inputs[0];
        let k = *input.shape().last().context("layer norm of a scalar")?;
        ensure!(k > 0, "layer norm of rows of no values");
        let plain = input.try_as_plain_ram()?;
        let values = plain.as_slice::<f32>()?;
        // SAFETY: every row is written by its normalization, and the rows are split between threads
        // without gaps.
        #[allow(unsafe_code)]
        let mut output = unsafe { Tensor::uninitialized::<f32>(input.shape())? };
        {
            let mut view = output.try_as_plain_ram_mut()?;
            packed_linear::by_rows(values, k, view.as_slice_mut::<f32>()?, k, |_, values, out| {
                self.0.normalize(values, k, out)
            })?;
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for LayerNorm {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(inputs[0].datum_type == f32::datum_type(), "layer norm of {:?}", inputs[0].datum_type);
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }

    as_op!();
}

/// Replaces every layer norm an optimized plan still computes as tract's chain of nodes with a
/// [`LayerNorm`].
#[derive(Debug)]
pub(crate) struct PlanLayerNorms;

impl ModelTransform for PlanLayerNorms {
    fn name(&self) -> StaticName {
        "kiln-plan-layer-norms".into()
    }

    fn transform(&self, model: &mut TypedModel) -> TractResult<()> {
        let mut norms = vec![];
        for node in model.nodes() {
            let outlet = OutletId::new(node.id, 0);
            if node.outputs.len() == 1 && linear_fusion::layer_norm(model, outlet)?.is_some() {
                norms.push(node.name.clone());
            }
        }
        for name in norms {
            let outlet = OutletId::new(model.node_id_by_name(&name)?, 0);
            let (rows, normalize) = linear_fusion::layer_norm(model, outlet)?.context("found above")?;
            let mut patch = TypedModelPatch::default();
            let rows = patch.tap_model(model, rows)?;
            let normed = patch.wire_node(format!("{name}.layer_norm"), LayerNorm(normalize), &[rows])?;
            patch.shunt_outside(model, outlet, normed[0])?;
            patch.apply(model)?;
        }
        model.compact()
    }
}
