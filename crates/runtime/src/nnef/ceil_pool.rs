//! Pools in ONNX ceil mode, written as plain NNEF pools.
//!
//! NNEF pools have no ceil mode, and tract-nnef 0.23.9 loses it silently: its writer
//! (`ops::nnef::ser::cnn_pool`) writes the padding of an `ExplicitOnnxPool(before, after, true)` as is, and
//! its reader (`ops::nnef::deser::pool_spec_for_pools`) reads every pool back with ceil mode off. The round
//! trip then shrinks the output or, where the window overhangs the input, keeps the size but divides by the
//! whole kernel instead of the taps inside the input: EfficientNet's pooler (`AvgPool2d(hidden_dim,
//! ceil_mode=True)` over a 7x7 map) came back 1280² / 49 times too small. The dumpers here write the same
//! pool without ceil mode: the trailing padding grows by the overhang of the last window, so the output size
//! is the same, and `count_include_pad` padding becomes an explicit zero `pad` before a pool that counts only
//! real taps, so the divisor is the same.

use tract_core::ops::array::{Pad, PadMode};
use tract_core::ops::cnn::{MaxPool, PaddingSpec, PoolSpec, SumPool};
use tract_nnef::internal::*;
use tract_nnef::ops::nnef::ser;

/// Registers the ceil-mode dumpers; `registry` must come before tract's in the framework's list, since
/// the first registry with a dumper for an operator writes it.
pub(crate) fn register(registry: &mut Registry) {
    registry.register_dumper(sum_pool);
    registry.register_dumper(max_pool);
}

fn sum_pool(ast: &mut IntoAst, node: &TypedNode, op: &SumPool) -> TractResult<Option<Arc<RValue>>> {
    let input = ast.model.outlet_fact(node.inputs[0])?.clone();
    let Some(CeilPadding { before, after, overhang }) = CeilPadding::of(&op.pool_spec, &input.shape)? else {
        return Ok(None);
    };
    if !(op.normalize && op.count_include_pad) {
        // Padding adds nothing to a sum, and without `count_include_pad` only the input's taps count.
        let pool_spec = without_ceil_mode(&op.pool_spec, before, grown(&after, &overhang));
        return ser::sum_pool(ast, node, &SumPool { pool_spec, ..op.clone() });
    }
    // The divisor counts the taps inside the padded input: pad with zeros, then count the real taps.
    let pool_spec = without_ceil_mode(&op.pool_spec, tvec![0; before.len()], overhang);
    let average = SumPool { pool_spec, count_include_pad: false, normalize: true };
    if before.iter().chain(&after).all(|pad| *pad == 0) {
        return ser::sum_pool(ast, node, &average);
    }
    let shape = op.pool_spec.data_format.shape(input.shape.to_tvec())?;
    let mut pads = vec![(0, 0); input.rank()];
    for (spatial, axis) in (shape.h_axis()..).take(shape.hw_rank()).enumerate() {
        pads[axis] = (before[spatial], after[spatial]);
    }
    let zero = PadMode::Constant(Tensor::zero_scalar_dt(input.datum_type)?.into_arc_tensor());
    let padded = ser::pad(ast, node, &Pad::new(pads, zero))?.context("writing the explicit padding")?;
    // The pool reads its input through the mapping: give the padded tensor an outlet of its own, a slot
    // this node does not have, so it names nothing else.
    let mut pooled = node.clone();
    pooled.inputs[0] = OutletId::new(node.id, node.outputs.len());
    ast.mapping.insert(pooled.inputs[0], padded);
    ser::sum_pool(ast, &pooled, &average)
}

fn max_pool(ast: &mut IntoAst, node: &TypedNode, op: &MaxPool) -> TractResult<Option<Arc<RValue>>> {
    let input = ast.model.outlet_fact(node.inputs[0])?;
    let Some(CeilPadding { before, after, overhang }) = CeilPadding::of(&op.pool_spec, &input.shape)? else {
        return Ok(None);
    };
    // Padding never wins a max: the grown padding only keeps the output size.
    let pool_spec = without_ceil_mode(&op.pool_spec, before, grown(&after, &overhang));
    ser::max_pool(ast, node, &MaxPool { pool_spec, ..op.clone() })
}

/// The explicit padding of a pool in ceil mode, per spatial axis, and how far its last window reaches past
/// the padded input: the trailing padding that gives the same output size without ceil mode.
struct CeilPadding {
    before: TVec<usize>,
    after: TVec<usize>,
    overhang: TVec<usize>,
}

impl CeilPadding {
    /// `None` for a pool not in ceil mode; an error when a spatial size is symbolic, since the overhang
    /// depends on it.
    fn of(spec: &PoolSpec, input_shape: &ShapeFact) -> TractResult<Option<CeilPadding>> {
        let PaddingSpec::ExplicitOnnxPool(before, after, true) = &spec.padding else {
            return Ok(None);
        };
        let shape = spec.data_format.shape(input_shape.to_tvec())?;
        let mut overhang = tvec![];
        for (axis, dim) in shape.hw_dims().iter().enumerate() {
            let input = dim.to_usize().with_context(|| {
                format!("a pool in ceil mode over the symbolic size {dim} cannot be written to NNEF")
            })?;
            let (kernel, dilation, stride) =
                (spec.kernel_shape[axis], spec.dilation(axis), spec.stride(axis));
            let outputs = spec.padding.compute_one(axis, &input, kernel, dilation, stride).convoluted;
            let reach = outputs.saturating_sub(1) * stride + (kernel - 1) * dilation + 1;
            overhang.push(reach.saturating_sub(before[axis] + input + after[axis]));
        }
        Ok(Some(CeilPadding { before: before.clone(), after: after.clone(), overhang }))
    }
}

fn grown(after: &[usize], overhang: &[usize]) -> TVec<usize> {
    after.iter().zip(overhang).map(|(after, overhang)| after + overhang).collect()
}

/// `spec` with explicit padding `before` and `after`, ceil mode off.
fn without_ceil_mode(spec: &PoolSpec, before: TVec<usize>, after: TVec<usize>) -> PoolSpec {
    PoolSpec { padding: PaddingSpec::ExplicitOnnxPool(before, after, false), ..spec.clone() }
}

#[cfg(test)]
mod tests {
    use tract_core::ops::nn::DataFormat;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// A pool over `f32[1, 2, size, size]` in ceil mode.
    fn pool_spec(size: usize, kernel: usize, stride: usize, padding: usize) -> (TypedFact, PoolSpec) {
        let spec = PoolSpec::new(
            DataFormat::NCHW,
            tvec![kernel; 2],
            PaddingSpec::ExplicitOnnxPool(tvec![padding; 2], tvec![padding; 2], true),
            None,
            Some(tvec![stride; 2]),
            2,
            2,
        );
        (f32::fact([1, 2, size, size]), spec)
    }

    /// Writes `op` over `input` to NNEF, reads it back, and checks both compute the same on a ramp.
    fn round_trip(input: TypedFact, op: Box<dyn TypedOp>) -> TestResult {
        let mut model = TypedModel::default();
        let source = model.add_source("input", input.clone())?;
        let output = model.wire_node("pool", op, &[source])?;
        model.select_output_outlets(&output)?;
        let mut bytes = vec![];
        crate::nnef().write_to_tar(&model, &mut bytes)?;
        let reloaded = crate::nnef().model_for_read(&mut &bytes[..])?;
        let shape = input.shape.as_concrete().ok_or("symbolic input")?.to_vec();
        let values: Vec<f32> = (0..shape.iter().product::<usize>()).map(|i| (i % 17) as f32 - 5.0).collect();
        let input = Tensor::from_shape(&shape, &values)?;
        let expected = model.into_runnable()?.run(tvec![input.clone().into_tvalue()])?;
        let found = reloaded.into_optimized()?.into_runnable()?.run(tvec![input.into_tvalue()])?;
        assert_eq!(found[0].shape(), expected[0].shape());
        found[0].close_enough(&expected[0], Approximation::Close)?;
        Ok(())
    }

    /// EfficientNet's pooler: a kernel far larger than the input averages the taps inside it.
    #[test]
    fn overhanging_average_keeps_its_divisor() -> TestResult {
        let (input, pool_spec) = pool_spec(2, 320, 320, 0);
        round_trip(input, Box::new(SumPool { pool_spec, count_include_pad: true, normalize: true }))
    }

    /// A padded average in ceil mode counts the padding but not the overhang of the last window.
    #[test]
    fn padded_average_counts_padding_but_not_overhang() -> TestResult {
        for count_include_pad in [true, false] {
            let (input, pool_spec) = pool_spec(6, 3, 2, 1);
            round_trip(input, Box::new(SumPool { pool_spec, count_include_pad, normalize: true }))?;
        }
        Ok(())
    }

    /// Ceil mode adds an output where the last window starts inside the input but overhangs it.
    #[test]
    fn max_pool_keeps_its_ceil_mode_output_size() -> TestResult {
        let (input, pool_spec) = pool_spec(6, 3, 2, 0);
        round_trip(input, Box::new(MaxPool { pool_spec, with_index_outputs: None }))
    }
}
