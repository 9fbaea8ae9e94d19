//! A thin wiring layer over tract's `TypedModel` so the ViT and the fused pre/post-processing read
//! like the math they implement.

use tract_core::internal::*;
use tract_core::ops::binary::TypedBinOp;
use tract_core::ops::einsum::EinSum;
use tract_core::ops::nn::{Reduce, Reducer, Softmax, SoftmaxKind};
use tract_core::ops::{self, change_axes::wire_rank_broadcast};

use crate::config::Activation;

/// Wires nodes into a `TypedModel`, broadcasting ranks for binary operations.
pub struct GraphWiring {
    /// The model being built.
    pub model: TypedModel,
}

impl GraphWiring {
    pub fn new() -> GraphWiring {
        GraphWiring { model: TypedModel::default() }
    }

    /// An empty model whose symbols (the batch `N`) are those of `other`, so its nodes can be copied in.
    pub fn sharing_symbols(other: &TypedModel) -> GraphWiring {
        GraphWiring { model: TypedModel { symbols: other.symbols.clone(), ..TypedModel::default() } }
    }

    /// The symbolic batch dimension shared by every input and output.
    pub fn batch(&self) -> TDim {
        self.model.sym("N").to_dim()
    }

    pub fn konst(&mut self, name: &str, tensor: Tensor) -> TractResult<OutletId> {
        self.model.add_const(name, tensor)
    }

    pub fn scalar(&mut self, name: &str, value: f32) -> TractResult<OutletId> {
        self.konst(name, tensor0(value))
    }

    pub fn op(
        &mut self,
        name: &str,
        op: impl Into<Box<dyn TypedOp>>,
        inputs: &[OutletId],
    ) -> TractResult<OutletId> {
        Ok(self.model.wire_node(name, op, inputs).with_context(|| format!("wiring {name}"))?[0])
    }

    pub fn binary(&mut self, name: &str, op: TypedBinOp, a: OutletId, b: OutletId) -> TractResult<OutletId> {
        let inputs = wire_rank_broadcast(name, &mut self.model, &[a, b])?;
        self.op(name, op, &inputs)
    }

    /// `a op scalar`.
    pub fn binary_scalar(
        &mut self,
        name: &str,
        op: TypedBinOp,
        a: OutletId,
        value: f32,
    ) -> TractResult<OutletId> {
        let b = self.scalar(&format!("{name}.value"), value)?;
        self.binary(name, op, a, b)
    }

    pub fn einsum(&mut self, name: &str, expr: &str, inputs: &[OutletId]) -> TractResult<OutletId> {
        let op = EinSum::new(expr.parse()?, f32::datum_type());
        self.op(name, op, inputs)
    }

    /// `x @ weight^T + bias` over the last axis of `x`, with `weight` laid out `[out, in]` as in PyTorch.
    pub fn linear(
        &mut self,
        name: &str,
        x: OutletId,
        weight: Tensor,
        bias: Option<Tensor>,
    ) -> TractResult<OutletId> {
        let rank = self.model.outlet_fact(x)?.rank();
        let batch: String = "abcdefgh".chars().take(rank - 1).collect();
        let w = self.konst(&format!("{name}.weight"), weight)?;
        let y = self.einsum(&format!("{name}.matmul"), &format!("{batch}i,oi->{batch}o"), &[x, w])?;
        match bias {
            Some(bias) => {
                let b = self.konst(&format!("{name}.bias"), bias)?;
                self.binary(name, ops::math::add(), y, b)
            }
            None => Ok(y),
        }
    }

    /// Layer normalization over the last axis, as `torch.nn.LayerNorm`.
    pub fn layer_norm(
        &mut self,
        name: &str,
        x: OutletId,
        gamma: Tensor,
        beta: Tensor,
        eps: f32,
    ) -> TractResult<OutletId> {
        let fact = self.model.outlet_fact(x)?.clone();
        let axis = fact.rank() - 1;
        let width = fact.shape[axis].to_i64()? as f32;
        let sum =
            self.op(&format!("{name}.sum"), Reduce { axes: tvec!(axis), reducer: Reducer::Sum }, &[x])?;
        let mean = self.binary_scalar(&format!("{name}.mean"), ops::math::mul(), sum, 1.0 / width)?;
        let centered = self.binary(&format!("{name}.centered"), ops::math::sub(), x, mean)?;
        let var = self.op(
            &format!("{name}.var"),
            Reduce { axes: tvec!(axis), reducer: Reducer::MeanOfSquares },
            &[centered],
        )?;
        let var_eps = self.binary_scalar(&format!("{name}.var_eps"), ops::math::add(), var, eps)?;
        let inv_std = self.op(&format!("{name}.inv_std"), ops::math::rsqrt(), &[var_eps])?;
        let normed = self.binary(&format!("{name}.normed"), ops::math::mul(), centered, inv_std)?;
        let g = self.konst(&format!("{name}.gamma"), gamma)?;
        let scaled = self.binary(&format!("{name}.scaled"), ops::math::mul(), normed, g)?;
        let b = self.konst(&format!("{name}.beta"), beta)?;
        self.binary(name, ops::math::add(), scaled, b)
    }

    /// The activation as elementary operations (each has an NNEF serializer).
    pub fn activation(&mut self, name: &str, x: OutletId, act: Activation) -> TractResult<OutletId> {
        use ops::math::{add, mul};
        match act {
            Activation::Gelu => {
                let t =
                    self.binary_scalar(&format!("{name}.scaled"), mul(), x, std::f32::consts::FRAC_1_SQRT_2)?;
                let e = self.op(&format!("{name}.erf"), ops::math::erf(), &[t])?;
                let one_plus = self.binary_scalar(&format!("{name}.one_plus"), add(), e, 1.0)?;
                let prod = self.binary(&format!("{name}.prod"), mul(), x, one_plus)?;
                self.binary_scalar(name, mul(), prod, 0.5)
            }
            Activation::GeluTanh => {
                let x2 = self.binary(&format!("{name}.x2"), mul(), x, x)?;
                let x3 = self.binary(&format!("{name}.x3"), mul(), x2, x)?;
                let cubic = self.binary_scalar(&format!("{name}.cubic"), mul(), x3, 0.044715)?;
                let inner = self.binary(&format!("{name}.inner"), add(), x, cubic)?;
                let scale = (2.0 / std::f32::consts::PI).sqrt();
                let scaled = self.binary_scalar(&format!("{name}.scaled"), mul(), inner, scale)?;
                let t = self.op(&format!("{name}.tanh"), ops::math::tanh(), &[scaled])?;
                let one_plus = self.binary_scalar(&format!("{name}.one_plus"), add(), t, 1.0)?;
                let prod = self.binary(&format!("{name}.prod"), mul(), x, one_plus)?;
                self.binary_scalar(name, mul(), prod, 0.5)
            }
            Activation::QuickGelu => {
                let scaled = self.binary_scalar(&format!("{name}.scaled"), mul(), x, 1.702)?;
                let gate = self.op(&format!("{name}.sigmoid"), ops::nn::sigmoid(), &[scaled])?;
                self.binary(name, mul(), x, gate)
            }
            Activation::Silu => {
                let gate = self.op(&format!("{name}.sigmoid"), ops::nn::sigmoid(), &[x])?;
                self.binary(name, mul(), x, gate)
            }
            Activation::Relu => self.binary_scalar(name, ops::math::max(), x, 0.0),
        }
    }

    pub fn softmax(&mut self, name: &str, x: OutletId, axis: usize) -> TractResult<OutletId> {
        let op = Softmax { axes: tvec!(axis), quant_output_dt: None, kind: SoftmaxKind::Softmax };
        self.op(name, op, &[x])
    }

    /// Reduces `axis` with `reducer` and drops it.
    pub fn reduce_drop(
        &mut self,
        name: &str,
        x: OutletId,
        axis: usize,
        reducer: Reducer,
    ) -> TractResult<OutletId> {
        let kept = self.op(&format!("{name}.keep"), Reduce { axes: tvec!(axis), reducer }, &[x])?;
        self.op(name, AxisOp::Rm(axis), &[kept])
    }

    /// Appends the classification head: `confidence` (top-1 softmax probability, `f32[N]`), `class_index`
    /// (argmax, `i64[N]`) and `logits` (`f32[N, classes]`), and makes them the model's outputs.
    pub fn classification_outputs(mut self, logits: OutletId) -> TractResult<TypedModel> {
        let logits = self.op(crate::LOGITS_OUTPUT, ops::identity::Identity, &[logits])?;
        let probs = self.softmax("probabilities", logits, 1)?;
        let confidence = self.reduce_drop(crate::CONFIDENCE_OUTPUT, probs, 1, Reducer::Max)?;
        let class = self.reduce_drop(crate::CLASS_OUTPUT, logits, 1, Reducer::ArgMax(false))?;
        self.model.select_output_outlets(&[confidence, class, logits])?;
        Ok(self.model)
    }
}

/// Concrete dimensions as tract's symbolic `TDim`s, for `AxisOp::Reshape`.
pub fn dims(values: &[usize]) -> TVec<TDim> {
    values.iter().map(|v| v.to_dim()).collect()
}
