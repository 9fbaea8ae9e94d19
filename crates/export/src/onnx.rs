//! ONNX image classifiers (e.g. `torch.onnx.export` of a ViT): the imported graph gets the same fused
//! pre- and post-processing as a graph built from weights.

use std::path::Path;

use tract_core::internal::*;
use tract_core::ops;
use tract_onnx::prelude::{Framework, InferenceModelExt};

use crate::ExportError;
use crate::graph::GraphWiring;
use crate::vit::{Normalization, VitInput};

/// Loads `path` as a classifier taking `pixel_values: f32[N, 3, side, side]` and returning logits
/// `f32[N, classes]`; `input` chooses whether the result takes raw pixels (fused) or `pixel_values`.
pub fn build(
    path: &Path,
    side: usize,
    normalization: &Normalization,
    input: VitInput,
) -> Result<TypedModel, ExportError> {
    build_graph(path, side, normalization, input)
        .map_err(|e| ExportError::Onnx { path: path.to_owned(), reason: format!("{e:?}") })
}

fn build_graph(
    path: &Path,
    side: usize,
    normalization: &Normalization,
    input: VitInput,
) -> TractResult<TypedModel> {
    // Exporters record intermediate and output shapes with their own batch symbol (torch's dynamo exporter
    // writes `batch` into every value_info), which cannot unify with the symbol set on the input below.
    // They are hints only; tract infers every shape from the input fact.
    let mut inference = tract_onnx::onnx()
        .with_ignore_output_shapes(true)
        .with_ignore_value_info(true)
        .model_for_path(path)?;
    if inference.input_outlets()?.len() != 1 || inference.output_outlets()?.len() != 1 {
        bail!("expected one input (pixel_values) and one output (logits)");
    }
    let n = inference.sym("N");
    let fact = f32::fact(tvec!(n.to_dim(), 3.to_dim(), side.to_dim(), side.to_dim()));
    inference.set_input_fact(0, fact.into())?;
    let source = inference.into_typed()?;

    let mut g = GraphWiring::sharing_symbols(&source);
    let batch = g.batch();
    let pixel_values = match input {
        VitInput::PixelValues => g
            .model
            .add_source("pixel_values", f32::fact(tvec!(batch, 3.to_dim(), side.to_dim(), side.to_dim())))?,
        VitInput::Pixels => {
            let src = g
                .model
                .add_source("image", u8::fact(tvec!(batch, side.to_dim(), side.to_dim(), 3.to_dim())))?;
            let x = g.op("image.f32", ops::cast::cast(f32::datum_type()), &[src])?;
            let Normalization { rescale, mean, std } = *normalization;
            let scale = tensor1(&[rescale / std[0], rescale / std[1], rescale / std[2]]);
            let shift = tensor1(&[-mean[0] / std[0], -mean[1] / std[1], -mean[2] / std[2]]);
            let scale = g.konst("image.scale", scale)?;
            let x = g.binary("image.scaled", ops::math::mul(), x, scale)?;
            let shift = g.konst("image.shift", shift)?;
            let x = g.binary("image.normalized", ops::math::add(), x, shift)?;
            g.op("image.chw", AxisOp::Move(3, 1), &[x])?
        }
    };
    let logits = inline(&mut g, &source, pixel_values)?;
    let classes = g.model.outlet_fact(logits)?.shape.last().cloned();
    if g.model.outlet_fact(logits)?.rank() != 2 {
        bail!(
            "output has shape {:?}, expected [N, classes] logits (classes: {classes:?})",
            g.model.outlet_fact(logits)?.shape
        );
    }
    g.classification_outputs(logits)
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
