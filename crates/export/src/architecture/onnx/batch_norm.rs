//! ONNX `BatchNormalization` in training mode: normalization by the statistics of its own input.
//!
//! tract's builder (tract-onnx 0.23.9, `ops::nn::batch_normalization`) ignores `training_mode` and
//! always normalizes with the given running statistics, accepting a single output. The PyTorch exporter
//! writes `F.batch_norm(w.reshape(1, out, -1), None, None, training=True)` as such a node with three
//! outputs: BiT's weight-standardized convolutions do it for every kernel, and tract refused them
//! ("Failed analyse for node .../BatchNormalization"). Training-mode nodes are built here; the others
//! still go to tract's builder.

use std::sync::LazyLock;

use tract_core::ops::change_axes::wire_with_rank_broadcast;
use tract_core::ops::math::{add, mul, rsqrt, sub};
use tract_core::ops::nn::{Reduce, Reducer};
use tract_onnx::model::ParsingContext;
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// What tract-onnx registers for an ONNX operator.
type OpBuilder = fn(&ParsingContext, &NodeProto) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

/// tract's own `BatchNormalization` builder, for inference-mode nodes.
static TRACT_BUILDER: LazyLock<Option<OpBuilder>> =
    LazyLock::new(|| tract_onnx::onnx().op_register.0.get("BatchNormalization").copied());

/// The `BatchNormalization` builder kiln registers in tract-onnx's operator register.
pub fn batch_normalization(
    ctx: &ParsingContext,
    node: &NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    if node.get_attr_opt::<i64>("training_mode")?.unwrap_or(0) == 0 {
        let tract = TRACT_BUILDER.context("tract-onnx registers no BatchNormalization builder")?;
        return tract(ctx, node);
    }
    let named = |index: usize| node.output.get(index).is_some_and(|name| !name.is_empty());
    let op = TrainingBatchNorm {
        epsilon: node.get_attr_opt("epsilon")?.unwrap_or(1e-5),
        momentum: node.get_attr_opt("momentum")?.unwrap_or(0.9),
        running_mean: named(1),
        running_variance: named(2),
    };
    Ok((expand(op), vec![]))
}

/// `Y = (X - mean) / sqrt(var + epsilon) * scale + B` with `mean` and (biased) `var` taken over every axis
/// but the channels (axis 1); the optional outputs are the updated running statistics
/// `running * momentum + current * (1 - momentum)`, as the ONNX specification defines them.
#[derive(Debug, Clone)]
struct TrainingBatchNorm {
    epsilon: f32,
    momentum: f32,
    /// Whether the node names its second output.
    running_mean: bool,
    /// Whether the node names its third output.
    running_variance: bool,
}

impl Expansion for TrainingBatchNorm {
    fn name(&self) -> StaticName {
        "TrainingBatchNorm".into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(1 + self.running_mean as usize + self.running_variance as usize)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 5)?;
        check_output_arity(outputs, self.nboutputs()?)?;
        s.equals(&outputs[0].datum_type, &inputs[0].datum_type)?;
        s.equals(&outputs[0].shape, &inputs[0].shape)?;
        for statistic in &outputs[1..] {
            s.equals(&statistic.datum_type, &inputs[0].datum_type)?;
            s.equals(&statistic.rank, 1)?;
            s.equals(&statistic.shape[0], &inputs[0].shape[1])?;
        }
        Ok(())
    }

    fn wire(&self, prefix: &str, model: &mut TypedModel, inputs: &[OutletId]) -> TractResult<TVec<OutletId>> {
        let x = inputs[0];
        let fact = model.outlet_fact(x)?.clone();
        ensure!(fact.rank() >= 2, "{prefix}: BatchNormalization needs a channel axis, input is {fact:?}");
        let axes: TVec<usize> = (0..fact.rank()).filter(|axis| *axis != 1).collect();
        let mut count = 1usize;
        for axis in &axes {
            count *= fact.shape[*axis].to_usize().with_context(|| {
                format!(
                    "{prefix}: training-mode BatchNormalization over the symbolic size {}",
                    fact.shape[*axis]
                )
            })?;
        }
        let dt = fact.datum_type;
        let scalar = |model: &mut TypedModel, name: String, value: f32| -> TractResult<OutletId> {
            model.add_const(name, tensor0(value).cast_to_dt(dt)?.into_owned())
        };
        let sum = model.wire_node(format!("{prefix}.sum"), Reduce::new(axes.clone(), Reducer::Sum), &[x])?[0];
        let inverse_count = scalar(model, format!("{prefix}.inverse_count"), 1.0 / count as f32)?;
        let mean =
            wire_with_rank_broadcast(format!("{prefix}.mean"), model, mul(), &[sum, inverse_count])?[0];
        let centered = model.wire_node(format!("{prefix}.centered"), sub(), &[x, mean])?[0];
        let variance = model.wire_node(
            format!("{prefix}.variance"),
            Reduce::new(axes, Reducer::MeanOfSquares),
            &[centered],
        )?[0];
        let epsilon = scalar(model, format!("{prefix}.epsilon"), self.epsilon)?;
        let shifted =
            wire_with_rank_broadcast(format!("{prefix}.shifted"), model, add(), &[variance, epsilon])?[0];
        let inverse_deviation =
            model.wire_node(format!("{prefix}.inverse_deviation"), rsqrt(), &[shifted])?[0];
        let normalized =
            model.wire_node(format!("{prefix}.normalized"), mul(), &[centered, inverse_deviation])?[0];
        let scale = per_channel(model, &format!("{prefix}.scale"), inputs[1], fact.rank())?;
        let scaled = model.wire_node(format!("{prefix}.scaled"), mul(), &[normalized, scale])?[0];
        let bias = per_channel(model, &format!("{prefix}.bias"), inputs[2], fact.rank())?;
        let mut outputs = tvec![model.wire_node(prefix, add(), &[scaled, bias])?[0]];
        let statistics = [
            ("mean", self.running_mean, mean, inputs[3]),
            ("variance", self.running_variance, variance, inputs[4]),
        ];
        for (statistic, named, current, running) in statistics {
            if !named {
                continue;
            }
            let name = format!("{prefix}.running_{statistic}");
            let mut current = current;
            for axis in (0..fact.rank()).rev().filter(|axis| *axis != 1) {
                current = model.wire_node(format!("{name}.squeeze_{axis}"), AxisOp::Rm(axis), &[current])?[0];
            }
            let momentum = scalar(model, format!("{name}.momentum"), self.momentum)?;
            let kept =
                wire_with_rank_broadcast(format!("{name}.kept"), model, mul(), &[running, momentum])?[0];
            let rest = scalar(model, format!("{name}.rest"), 1.0 - self.momentum)?;
            let added = wire_with_rank_broadcast(format!("{name}.added"), model, mul(), &[current, rest])?[0];
            outputs.push(model.wire_node(name, add(), &[kept, added])?[0]);
        }
        Ok(outputs)
    }
}

/// `[C]` -> `[1, C, 1, ...]` of rank `rank`, to broadcast over the channel axis.
fn per_channel(model: &mut TypedModel, name: &str, wire: OutletId, rank: usize) -> TractResult<OutletId> {
    let mut wire = model.wire_node(format!("{name}.batch_axis"), AxisOp::Add(0), &[wire])?[0];
    for axis in 2..rank {
        wire = model.wire_node(format!("{name}.spatial_axis_{axis}"), AxisOp::Add(axis), &[wire])?[0];
    }
    Ok(wire)
}
