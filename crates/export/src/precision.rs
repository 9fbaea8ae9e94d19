//! The arithmetic a graph's heavy layers run in.

/// The arithmetic a graph's linear layers run in; each architecture says which it offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Everything in f32, as the checkpoint.
    #[default]
    F32,
    /// The linear layers (a transformer's attention projections and MLPs, 97 % of ViT-B's multiply-adds;
    /// ConvNeXt's pointwise layers) take int8 operands: weights quantized per output channel at export,
    /// activations per token at run time, both symmetric, accumulated in i32. Embeddings, attention
    /// scores, convolutions, normalization and the classifier stay f32.
    Int8,
    /// The same linear layers take bf16 operands (f32's exponent, 8 mantissa bits): weights rounded at
    /// export and stored in half f32's bytes, activations rounded per token at run time, products
    /// accumulated in f32. Everything else stays f32.
    Bf16,
}

impl Precision {
    /// The name recorded as the manifest's `graph.precision`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
            Precision::Bf16 => "bf16",
        }
    }
}
