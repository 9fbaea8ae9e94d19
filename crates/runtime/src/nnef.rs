//! The NNEF reader and writer of kiln graphs: tract's, plus the `kiln` extension.

use tract_nnef::internal::*;

/// tract's NNEF reader and writer with the `kiln` extension registered: [`crate::Attention`]
/// (`kiln_attention`) and [`crate::LinearI8`] (`kiln_linear_i8`) of format version 2 graphs, and
/// [`crate::QuantizeRows`] (`kiln_quantize_rows`) of version 1 int8 graphs. What reads and writes every
/// kiln graph, so int8 artifacts round-trip.
pub fn nnef() -> tract_nnef::framework::Nnef {
    let mut registry = Registry::new("kiln")
        .with_doc("Extension `kiln`: fused attention and int8 linear layers of kiln's ViT graphs.");
    crate::linear_i8::register(&mut registry);
    crate::attention::register(&mut registry);
    crate::quantize::register(&mut registry);
    let mut nnef = tract_nnef::nnef();
    nnef.registries.push(registry);
    nnef
}
