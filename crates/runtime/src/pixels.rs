//! `ScalePixels`: the image's `u8` pixels to the `f32` planes the model reads, as one plan operation.
//!
//! Every kiln graph starts the same way: the `u8[N, H, W, C]` image moved to planes, cast to f32,
//! multiplied by a per-channel scale and added a per-channel offset (the checkpoint's rescale and
//! normalization). tract runs those as four nodes on the calling thread, and its binary operations
//! broadcast the `[1, C, 1, 1]` constants element by element: 4 ns a value, 10 ms of a batch-8
//! int8 ViT-B/16 run on two threads (2 %) and 1.3 ms of a batch-1 image. This operation computes
//! the same `x * scale + offset` (two roundings, as the two nodes do, so the same bits) in one pass
//! over the pixels, its rows split between the executor's threads. It exists only in optimized
//! plans; artifacts keep the graph's plain operations.

use tract_core::ops::binary::BinMiniOp;
use tract_core::ops::cast::Cast;
use tract_core::ops::change_axes::AxisOp;
use tract_core::ops::math::{Add, Mul};
use tract_core::transform::ModelTransform;
use tract_linalg::multithread::{Executor, current_tract_executor};
use tract_nnef::internal::*;

use crate::linear_fusion;

/// Plane rows a thread takes at a time: a ViT-B/16 image's 672 rows make 21 jobs.
const ROWS_PER_JOB: usize = 32;

/// `u8[N, H, W, C]` pixels to `f32[N, C, H, W]` planes, `x * scale[c] + offset[c]`.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ScalePixels {
    scale: Vec<f32>,
    offset: Vec<f32>,
}

/// Two operations are the same when they scale alike (the graph's constants are never NaN).
impl Eq for ScalePixels {}

impl Op for ScalePixels {
    fn name(&self) -> StaticName {
        "ScalePixels".into()
    }

    op_as_typed_op!();
}

impl EvalOp for ScalePixels {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let image = &inputs[0];
        let &[n, h, w, c] = image.shape() else {
            bail!("pixels of shape {:?}, not [N, H, W, C]", image.shape())
        };
        ensure!(c == self.scale.len(), "{c} channels for {} scales", self.scale.len());
        let plain = image.try_as_plain_ram()?;
        let pixels = plain.as_slice::<u8>()?;
        // SAFETY: every plane row is written below: the rows are split between threads without gaps.
        #[allow(unsafe_code)]
        let mut output = unsafe { Tensor::uninitialized::<f32>(&[n, c, h, w])? };
        if output.len() == 0 {
            return Ok(tvec!(output.into_tvalue()));
        }
        let mut view = output.try_as_plain_ram_mut()?;
        let planes = view.as_slice_mut::<f32>()?;
        // Plane row `r` is row `r % h` of channel `r / h % c` of image `r / (h * c)`.
        let row = |(r, out): (usize, &mut [f32])| {
            let (y, channel, image) = (r % h, r / h % c, r / (h * c));
            let (scale, offset) = (self.scale[channel], self.offset[channel]);
            let line = &pixels[(image * h + y) * w * c..][..w * c];
            for (value, pixel) in out.iter_mut().zip(line.iter().skip(channel).step_by(c)) {
                *value = *pixel as f32 * scale + offset;
            }
        };
        match current_tract_executor() {
            Executor::MultiThread(pool) => pool.install(|| {
                use rayon::prelude::*;
                planes.par_chunks_mut(w).enumerate().with_min_len(ROWS_PER_JOB).for_each(row)
            }),
            _ => planes.chunks_mut(w).enumerate().for_each(row),
        }
        Ok(tvec!(output.into_tvalue()))
    }
}

impl TypedOp for ScalePixels {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let image = inputs[0];
        ensure!(image.datum_type == u8::datum_type() && image.rank() == 4, "pixels are u8[N, H, W, C]");
        let s = &image.shape;
        Ok(tvec!(f32::fact([s[0].clone(), s[3].clone(), s[1].clone(), s[2].clone()])))
    }

    as_op!();
}

/// Replaces the chain that turns the image into planes (`MoveAxis` of `u8` channels to axis 1,
/// cast to f32, times a per-channel constant, plus one) with a [`ScalePixels`].
#[derive(Debug)]
pub(crate) struct PlanScalePixels;

impl ModelTransform for PlanScalePixels {
    fn name(&self) -> StaticName {
        "kiln-plan-scale-pixels".into()
    }

    fn transform(&self, model: &mut TypedModel) -> TractResult<()> {
        let found = model.nodes().iter().map(|node| chain(model, node)).find_map(Result::transpose);
        let Some((image, op, output)) = found.transpose()? else { return Ok(()) };
        let mut patch = TypedModelPatch::default();
        let image = patch.tap_model(model, image)?;
        let name = &model.node(output.node).name;
        let planes = patch.wire_node(format!("{name}.scale_pixels"), op, &[image])?;
        patch.shunt_outside(model, output, planes[0])?;
        patch.apply(model)?;
        model.compact()
    }
}

/// When `add` ends the chain [`PlanScalePixels`] replaces, each step read by the next alone: the
/// image, the operation, and the chain's output.
fn chain(model: &TypedModel, add: &TypedNode) -> TractResult<Option<(OutletId, ScalePixels, OutletId)>> {
    let Some((mul, offset)) = by_channel::<Add>(model, add)? else { return Ok(None) };
    let Some((cast, scale)) = by_channel::<Mul>(model, model.node(mul.node))? else { return Ok(None) };
    let cast_node = model.node(cast.node);
    if cast_node.op_as::<Cast>().is_none_or(|op| op.to != f32::datum_type()) {
        return Ok(None);
    }
    let planes = cast_node.inputs[0];
    let planes_node = model.node(planes.node);
    if planes_node.op_as::<AxisOp>() != Some(&AxisOp::Move(3, 1)) || !linear_fusion::read_once(model, planes)?
    {
        return Ok(None);
    }
    let image = planes_node.inputs[0];
    let fact = model.outlet_fact(image)?;
    let channels = fact.shape.get(3).and_then(|c| c.to_usize().ok());
    if fact.datum_type != u8::datum_type() || fact.rank() != 4 || channels != Some(scale.len()) {
        return Ok(None);
    }
    Ok(Some((image, ScalePixels { scale, offset }, OutletId::new(add.id, 0))))
}

/// When `node` is the binary operation `B` of a tensor read by it alone and a constant
/// `f32[1, C, 1, 1]`: that tensor and the constant's `C` values.
fn by_channel<B: BinMiniOp>(
    model: &TypedModel,
    node: &TypedNode,
) -> TractResult<Option<(OutletId, Vec<f32>)>> {
    if node.inputs.len() != 2 || !linear_fusion::binary(node).is_some_and(|op| op.is::<B>()) {
        return Ok(None);
    }
    let [x, constant] = [node.inputs[0], node.inputs[1]];
    let Some(values) = &model.outlet_fact(constant)?.konst else { return Ok(None) };
    let fact = model.outlet_fact(x)?;
    if values.datum_type() != f32::datum_type()
        || values.rank() != 4
        || values.shape()[0] != 1
        || values.shape()[2..] != [1, 1]
        || fact.datum_type != f32::datum_type()
        || !linear_fusion::read_once(model, x)?
    {
        return Ok(None);
    }
    Ok(Some((x, values.try_as_plain_ram()?.as_slice::<f32>()?.to_vec())))
}

#[cfg(test)]
mod tests {
    use tract_core::ops::{cast, math};
    use tract_linalg::multithread::multithread_tract_scope;

    use super::*;

    type TestResult = Result<(), Box<dyn std::error::Error>>;

    /// The export's chain (`graph.rs`), on a `[2, 5, 7, 3]` image, with `cast` also an output when
    /// `cast_is_output`.
    fn chain_model(cast_is_output: bool) -> TractResult<TypedModel> {
        let mut model = TypedModel::default();
        let image = model.add_source("image", u8::fact([2, 5, 7, 3]))?;
        let planes = model.wire_node("planes", AxisOp::Move(3, 1), &[image])?;
        let x = model.wire_node("f32", cast::cast(f32::datum_type()), &planes)?[0];
        let per_channel = |values: [f32; 3]| Tensor::from_shape(&[1, 3, 1, 1], &values);
        let scale = model.add_const("scale", per_channel([1.0 / 255.0, 0.017, 2.0 / 255.0])?)?;
        let scaled = model.wire_node("scaled", math::mul(), &[x, scale])?[0];
        let offset = model.add_const("offset", per_channel([-0.485, -2.1, -1.0])?)?;
        let normalized = model.wire_node("normalized", math::add(), &[scaled, offset])?[0];
        let outputs = if cast_is_output { vec![normalized, x] } else { vec![normalized] };
        model.select_output_outlets(&outputs)?;
        Ok(model)
    }

    fn bits(tensor: &Tensor) -> TractResult<Vec<u32>> {
        Ok(tensor.to_plain_array_view::<f32>()?.iter().map(|v| v.to_bits()).collect())
    }

    /// Optimized, the chain is one `ScalePixels` computing the decluttered graph's bits, on one
    /// thread or two.
    #[test]
    fn the_chain_is_one_operation_of_the_same_bits() -> TestResult {
        let model = chain_model(false)?;
        let pixels: Vec<u8> = (0..2 * 5 * 7 * 3).map(|i| (i * 37 % 256) as u8).collect();
        let image = Tensor::from_shape(&[2, 5, 7, 3], &pixels)?;
        let expected = model.clone().into_decluttered()?.into_runnable()?.run(tvec!(image.clone().into()))?;
        let optimized = crate::optimize(model)?;
        let ops: Vec<String> = optimized.nodes().iter().map(|n| n.op.name().to_string()).collect();
        assert_eq!(ops, ["Source", "ScalePixels"], "{ops:?}");
        let plan = optimized.into_runnable()?;
        for executor in [Executor::SingleThread, Executor::multithread(2)] {
            let got = multithread_tract_scope(executor, || plan.run(tvec!(image.clone().into())))?;
            assert_eq!(got[0].shape(), [2, 3, 5, 7]);
            assert_eq!(bits(&got[0])?, bits(&expected[0])?);
        }
        Ok(())
    }

    /// A step of the chain read elsewhere keeps the chain as it is.
    #[test]
    fn a_chain_read_midway_stays() -> TestResult {
        let optimized = crate::optimize(chain_model(true)?)?;
        assert!(!optimized.nodes().iter().any(|n| n.op_is::<ScalePixels>()));
        Ok(())
    }
}
