//! `QuantizeRows`: per-token int8 quantization as a graph operation, and the row quantizer every int8
//! operation of kiln uses.
//!
//! Format version 1 int8 artifacts quantize each linear layer's input with this operation
//! (`kiln_quantize_rows`) and multiply with tract's quantized einsum; version 2 fuses the whole layer
//! into [`crate::LinearI8`], which the plan turns back into this operation and tract's einsum on
//! CPUs without AVX-512 VNNI.

use tract_nnef::internal::*;

/// The NNEF fragment name of [`QuantizeRows`].
const PRIMITIVE: &str = "kiln_quantize_rows";

/// 1.5 * 2^23: adding it to an f32 of magnitude below 2^22 rounds it to the nearest integer (ties
/// to even), which then sits in the low bits of the sum's bit pattern, two's complement.
const ROUNDING: f32 = 12_582_912.0;

/// Symmetric int8 quantization of each row (last axis) of an f32 tensor: outputs `round(x / s)` as
/// `i8` (same shape) and the per-row scale `s = max|x| / 127` as f32 with the last axis of size 1.
/// A row of zeros gets the smallest positive scale, so it quantizes to zeros without dividing by
/// zero. Rows holding NaN or infinity quantize to unspecified values, as the f32 model's would be.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct QuantizeRows;

impl Op for QuantizeRows {
    fn name(&self) -> StaticName {
        "QuantizeRows".into()
    }

    op_as_typed_op!();
}

impl EvalOp for QuantizeRows {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = args_1!(inputs);
        let shape = input.shape().to_vec();
        let width = *shape.last().context("quantize_rows needs an input of rank 1 or more")?;
        let mut scale_shape = shape.clone();
        *scale_shape.last_mut().expect("rank checked above") = 1;
        let mut quantized = Tensor::zero::<i8>(&shape)?;
        let mut scales = Tensor::zero::<f32>(&scale_shape)?;
        let plain = input.try_as_plain_ram()?;
        let values = plain.as_slice::<f32>()?;
        if width > 0 {
            let mut quantized_view = quantized.try_as_plain_ram_mut()?;
            let mut scales_view = scales.try_as_plain_ram_mut()?;
            for ((row, out), scale) in values
                .chunks_exact(width)
                .zip(quantized_view.as_slice_mut::<i8>()?.chunks_exact_mut(width))
                .zip(scales_view.as_slice_mut::<f32>()?)
            {
                *scale = quantize_row(row, out);
            }
        }
        Ok(tvec!(quantized.into_tvalue(), scales.into_tvalue()))
    }
}

/// Quantizes one row into `out` and returns its scale. Both loops are written so the compiler
/// vectorizes them: lane-wise maxima with plain comparisons (no NaN bookkeeping), and the rounding
/// done by one addition whose bit pattern's low byte is the result. A row of zeros gets the
/// smallest positive scale, so it quantizes to zeros without dividing by zero.
pub(crate) fn quantize_row(row: &[f32], out: &mut [i8]) -> f32 {
    const LANES: usize = 16;
    let mut peaks = [0f32; LANES];
    let chunks = row.chunks_exact(LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (peak, v) in peaks.iter_mut().zip(chunk) {
            let magnitude = v.abs();
            *peak = if magnitude > *peak { magnitude } else { *peak };
        }
    }
    let peak =
        tail.iter().chain(&peaks).fold(f32::MIN_POSITIVE, |m, v| if v.abs() > m { v.abs() } else { m });
    // `* (1/127)`, not `/ 127`: the formula of the tract-core form this replaces, so artifacts quantize
    // exactly as before (on a random-weight ViT-B, whose top-1 margins are tiny, the one-ulp difference
    // of `/ 127` flipped 2 more of the 32 synthetic images).
    let scale = peak * (1.0 / 127.0);
    let inverse = 1.0 / scale;
    for (q, v) in out.iter_mut().zip(row) {
        *q = (v * inverse + ROUNDING).to_bits() as i8;
    }
    scale
}

impl TypedOp for QuantizeRows {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let input = inputs[0];
        ensure!(
            input.datum_type == f32::datum_type(),
            "quantize_rows takes f32, found {:?}",
            input.datum_type
        );
        ensure!(input.rank() >= 1, "quantize_rows needs an input of rank 1 or more");
        let mut scale_shape = input.shape.to_tvec();
        *scale_shape.last_mut().expect("rank checked above") = 1.to_dim();
        Ok(tvec!(i8::fact(input.shape.clone()), f32::fact(scale_shape)))
    }

    as_op!();
}

/// Registers `kiln_quantize_rows` in the `kiln` NNEF extension.
pub(crate) fn register(registry: &mut Registry) {
    registry.register_dumper(serialize);
    registry.register_primitive(
        PRIMITIVE,
        &[TypeName::Scalar.tensor().named("input")],
        &[("quantized", TypeName::Integer.tensor()), ("scale", TypeName::Scalar.tensor())],
        deserialize,
    );
}

fn serialize(ast: &mut IntoAst, node: &TypedNode, _op: &QuantizeRows) -> TractResult<Option<Arc<RValue>>> {
    crate::nnef::invocation_of(PRIMITIVE, ast, node)
}

fn deserialize(builder: &mut ModelBuilder, invocation: &ResolvedInvocation) -> TractResult<Value> {
    let input = invocation.named_arg_as(builder, "input")?;
    builder.wire(QuantizeRows, &[input])
}

#[cfg(test)]
mod tests {
    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// Rows of a few widths (including ones that are not a multiple of the vector lanes) quantize to
    /// `round(x / s)` with `s = max|x| / 127`, a zero row to zeros.
    #[test]
    fn rows_quantize_to_rounded_multiples_of_their_scale() -> TestResult {
        for width in [1usize, 5, 16, 37, 768] {
            let rows = 3;
            let values: Vec<f32> = (0..rows * width)
                .map(|i| if i < width { 0.0 } else { ((i * 7919) % 1001) as f32 / 100.0 - 5.0 })
                .collect();
            let input = Tensor::from_shape(&[1, rows, width], &values)?;
            let outputs = QuantizeRows.eval(&EvalContext::out_of_plan(), tvec!(input.into_tvalue()))?;
            let quantized = outputs[0].to_plain_array_view::<i8>()?.iter().copied().collect::<Vec<_>>();
            let scales = outputs[1].to_plain_array_view::<f32>()?.iter().copied().collect::<Vec<_>>();
            assert_eq!(outputs[1].shape(), &[1, rows, 1]);
            for (r, (q, v)) in quantized.chunks(width).zip(values.chunks(width)).enumerate() {
                let peak = v.iter().fold(f32::MIN_POSITIVE, |m, v| m.max(v.abs()));
                let scale = peak * (1.0 / 127.0);
                assert!((scales[r] - scale).abs() <= scale * 1e-6, "row {r} of width {width}: scale");
                // Half a step, and a relative 1e-5 for `x * (1 / s)` against `x / s`.
                for (q, v) in q.iter().zip(v) {
                    let error = (*q as f32 * scale - v).abs();
                    assert!(error <= scale * 0.5 * (1.0 + 1e-5), "row {r} of width {width}: {v} -> {q}");
                }
            }
        }
        Ok(())
    }

    /// A graph holding the operation survives an NNEF write and read with [`crate::nnef`], and still
    /// computes the same thing: version 1 int8 artifacts keep loading.
    #[test]
    fn nnef_round_trip_keeps_the_operation() -> TestResult {
        let mut model = TypedModel::default();
        let source = model.add_source("x", f32::fact([2, 8]))?;
        let outputs = model.wire_node("q", QuantizeRows, &[source])?;
        model.select_output_outlets(&outputs)?;
        let mut buffer = vec![];
        crate::nnef().write_to_tar(&model, &mut buffer)?;
        let reloaded = crate::nnef().model_for_read(&mut &buffer[..])?.into_optimized()?.into_runnable()?;
        let values: Vec<f32> = (0..16).map(|i| i as f32 - 7.5).collect();
        let outputs = reloaded.run(tvec!(Tensor::from_shape(&[2, 8], &values)?.into_tvalue()))?;
        assert_eq!(outputs[0].datum_type(), i8::datum_type());
        let quantized = outputs[0].to_plain_array_view::<i8>()?.iter().copied().collect::<Vec<_>>();
        assert_eq!(quantized[0], -127);
        assert_eq!(quantized[15], 127);
        Ok(())
    }
}
