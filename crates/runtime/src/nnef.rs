//! The NNEF reader and writer of kiln graphs: tract's, plus the `kiln` extension.

use tract_nnef::internal::*;

mod ceil_pool;

/// tract's NNEF reader and writer with the `kiln` extension registered: [`crate::Attention`]
/// (`kiln_attention`), [`crate::LinearI8`] (`kiln_linear_i8`) and [`crate::LinearBf16`]
/// (`kiln_linear_bf16`) of format version 2 graphs and later, [`crate::AttentionBf16`]
/// (`kiln_attention_bf16`) of version 4 bf16 graphs, and [`crate::QuantizeRows`]
/// (`kiln_quantize_rows`) of version 1 int8 graphs; it also writes pools in ONNX ceil mode as plain NNEF
/// pools, which tract's writer would get wrong. What reads and writes every kiln graph, so int8 and bf16
/// artifacts and ONNX imports round-trip.
pub fn nnef() -> tract_nnef::framework::Nnef {
    let mut registry = Registry::new("kiln")
        .with_doc("Extension `kiln`: fused attention and int8/bf16 linear layers of kiln's ViT graphs.");
    crate::linear_i8::register(&mut registry);
    crate::linear_bf16::register(&mut registry);
    crate::attention::register(&mut registry);
    crate::quantize::register(&mut registry);
    ceil_pool::register(&mut registry);
    let mut nnef = tract_nnef::nnef();
    // First, so that its pool dumpers see ceil-mode pools before tract's, which would drop the mode.
    nnef.registries.insert(0, registry);
    nnef
}

/// A kiln operator's invocation: the node's inputs, in order, as positional arguments.
pub(crate) fn invocation_of(
    primitive: &str,
    ast: &mut IntoAst,
    node: &TypedNode,
) -> TractResult<Option<Arc<RValue>>> {
    let inputs: TVec<_> = node.inputs.iter().map(|i| ast.mapping[i].clone()).collect();
    Ok(Some(invocation(primitive, &inputs, &[])))
}

/// The wires of a kiln operator's named tensor arguments, in the order given.
pub(crate) fn named_wires(
    builder: &mut ModelBuilder,
    invocation: &ResolvedInvocation,
    names: &[&str],
) -> TractResult<TVec<OutletId>> {
    names.iter().map(|name| invocation.named_arg_as(builder, name)).collect()
}
