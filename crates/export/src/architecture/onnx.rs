//! Any ONNX image classifier tract can run (`optimum-cli export onnx --task image-classification`, or
//! `torch.onnx.export`): the imported graph gets the same fused pre- and post-processing as a graph built
//! from weights.

mod batch_norm;

use std::path::Path;

use tract_core::internal::*;
use tract_core::ops::Downsample;
use tract_core::ops::array::{Gather, StridedSlice};
use tract_core::ops::unimpl::UnimplementedOp;
use tract_onnx::prelude::{Framework, InferenceModel, InferenceModelExt};
use tract_onnx::tract_hir::infer::Factoid;

use super::{Architecture, InputSize};
use crate::graph::GraphWiring;
use crate::{ExportError, Precision};

/// An ONNX classifier, imported and typed with a symbolic batch, ready to be inlined.
struct OnnxClassifier {
    model: TypedModel,
}

/// Loads `path` as a classifier taking `pixel_values: f32[N, 3, height, width]` and returning logits
/// `f32[N, classes]`. Nothing is read from `config.json` but the labels.
pub fn open(path: &Path, input: InputSize) -> Result<Box<dyn Architecture>, ExportError> {
    let model = import(path, input)
        .map_err(|e| ExportError::Onnx { path: path.to_owned(), reason: format!("{e:#}") })?;
    Ok(Box::new(OnnxClassifier { model }))
}

fn import(path: &Path, input: InputSize) -> TractResult<TypedModel> {
    classifier(importer().model_for_path(path)?, input)
}

/// tract-onnx with kiln's operator builders.
fn importer() -> tract_onnx::Onnx {
    // Exporters record intermediate and output shapes with their own batch symbol (torch's dynamo exporter
    // writes `batch` into every value_info), which cannot unify with the symbol set on the input below.
    // They are hints only; tract infers every shape from the input fact.
    let mut onnx = tract_onnx::onnx().with_ignore_output_shapes(true).with_ignore_value_info(true);
    onnx.op_register.insert("BatchNormalization", batch_norm::batch_normalization);
    onnx
}

/// Types `inference` for `pixel_values: f32[N, 3, height, width]`, checks that it returns logits, and
/// lowers what NNEF cannot express.
fn classifier(mut inference: InferenceModel, input: InputSize) -> TractResult<TypedModel> {
    refuse_unimplemented(&inference)?;
    if inference.input_outlets()?.len() != 1 || inference.output_outlets()?.len() != 1 {
        bail!("expected one input (pixel_values) and one output (logits)");
    }
    let exported_batch = inference.input_fact(0)?.shape.dims().next().and_then(|dim| dim.concretize());
    let n = inference.sym("N");
    let fact = f32::fact(tvec!(n.to_dim(), 3.to_dim(), input.height.to_dim(), input.width.to_dim()));
    inference.set_input_fact(0, fact.into())?;
    let mut model = match (inference.into_typed(), exported_batch) {
        // The exporter traced this batch into constants (reshapes, concatenations) that cannot take another.
        (Err(e), Some(batch)) => {
            return Err(e.context(format!(
                "the input's batch is fixed at {batch}: export with a dynamic batch axis, as optimum does \
                 (torch.onnx.export(..., dynamic_axes={{\"pixel_values\": {{0: \"batch_size\"}}}}))"
            )));
        }
        (typed, _) => typed?,
    };
    let output = model.outlet_fact(model.output_outlets()?[0])?;
    if output.rank() != 2 {
        bail!("output has shape {:?}, expected [N, classes] logits", output.shape);
    }
    lower_strided_slices(&mut model)?;
    model.into_compact()
}

/// One line naming the first node whose operator tract-onnx has no builder for (it would otherwise fail
/// later, in analysis, under a wall of context).
fn refuse_unimplemented(model: &InferenceModel) -> TractResult<()> {
    let mut unimplemented = model.nodes().iter().filter(|node| node.op_is::<UnimplementedOp>());
    let Some(first) = unimplemented.next() else {
        return Ok(());
    };
    let name = first.op().name();
    let operator = name.strip_prefix("Unimplemented(").and_then(|n| n.strip_suffix(')')).unwrap_or(&name);
    let others = match unimplemented.count() {
        0 => String::new(),
        more => format!(" ({more} more nodes use operators tract lacks)"),
    };
    bail!("node {:?} uses the ONNX operator {operator}, which tract does not implement{others}", first.name)
}

/// Lowers the `StridedSlice`s tract types ONNX `Slice`s as: only their declutter turns them into core
/// operators, and tract-nnef has no serializer for them (kiln writes the typed graph, see FORMAT.md).
/// Strides become a `Gather` of the kept indices instead of tract's `Downsample`: tract 0.23.9's declutter
/// pulls a `Downsample` up through the graph and fails ("Invalid axis",
/// `downsample::array::pull_downsample_over_axis_op`) when it meets a reshape that splits its axis, as in
/// LeViT's `x.view(B, r, r, C)[:, ::2, ::2]`.
fn lower_strided_slices(model: &mut TypedModel) -> TractResult<()> {
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(op) = node.op_as::<StridedSlice>() else {
            continue;
        };
        let patch = op.declutter(model, node).with_context(|| format!("lowering {node}"))?;
        if let Some(patch) = patch {
            patch.apply(model)?;
        }
    }
    for id in model.eval_order()? {
        let node = model.node(id);
        let Some(op) = node.op_as::<Downsample>() else {
            continue;
        };
        let Some(length) = model.outlet_fact(node.inputs[0])?.shape[op.axis].as_i64() else {
            continue;
        };
        let all = Tensor::from_shape(&[length as usize], &(0..length).collect::<Vec<i64>>())?;
        let along_indices = Downsample { axis: 0, ..op.clone() };
        let kept = along_indices.eval(&EvalContext::out_of_plan(), tvec!(all.into_tvalue()))?.remove(0);
        let mut patch = TypedModelPatch::default();
        let input = patch.tap_model(model, node.inputs[0])?;
        let indices = patch.add_const(format!("{}.indices", node.name), kept.into_tensor())?;
        let gathered = patch.wire_node(&node.name, Gather::new(op.axis), &[input, indices])?[0];
        patch.shunt_outside(model, id.into(), gathered)?;
        patch.apply(model)?;
    }
    Ok(())
}

impl Architecture for OnnxClassifier {
    fn precisions(&self) -> &'static [Precision] {
        &[Precision::F32]
    }

    fn graph(&self) -> GraphWiring {
        GraphWiring::sharing_symbols(&self.model)
    }

    fn logits(&self, g: &mut GraphWiring, pixel_values: OutletId, _: Precision) -> TractResult<OutletId> {
        inline(g, &self.model, pixel_values)
    }
}

/// Copies every node of `source` into `g`, feeding its single input from `input`; returns its output.
fn inline(g: &mut GraphWiring, source: &TypedModel, input: OutletId) -> TractResult<OutletId> {
    let source_input = source.input_outlets()?[0];
    let mut mapping: HashMap<OutletId, OutletId> = HashMap::new();
    mapping.insert(source_input, input);
    for id in source.eval_order()? {
        let node = source.node(id);
        if id == source_input.node {
            continue;
        }
        let inputs = node.inputs.iter().map(|i| mapping[i]).collect::<TVec<_>>();
        let outputs = g.model.wire_node(format!("model.{}", node.name), node.op.clone(), &inputs)?;
        for (slot, outlet) in outputs.into_iter().enumerate() {
            mapping.insert(OutletId::new(id, slot), outlet);
        }
    }
    Ok(mapping[&source.output_outlets()?[0]])
}

#[cfg(test)]
mod tests;
