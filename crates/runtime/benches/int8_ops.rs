//! kiln's int8-graph operations against the tract operators they replace, on ViT-B/16's shapes, one
//! image on one thread: `cargo bench -p runtime --bench int8_ops`.
//!
//! Each group holds the kiln operation and its tract peer, so the ratio between them is measured in
//! one run (this machine's speed drifts too much for numbers from different runs to compare):
//! - `linear 197x768->3072` and `197x3072->768`: [`runtime::LinearI8`] against tract's f32 linear
//!   (EinSum) on the same shape;
//! - `attention 197 tokens x 12 heads x 64`: [`runtime::Attention`] against tract's einsum, softmax,
//!   einsum.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tract_core::ops::einsum::EinSum;
use tract_core::ops::nn::{Softmax, SoftmaxKind};
use tract_core::prelude::*;

const TOKENS: usize = 197;

fn values(count: usize, seed: usize) -> Vec<f32> {
    (0..count).map(|i| ((i * 7919 + seed * 104_729) % 2001) as f32 / 1000.0 - 1.0).collect()
}

fn tensor(shape: &[usize], seed: usize) -> Tensor {
    Tensor::from_shape(shape, &values(shape.iter().product(), seed)).expect("shape matches")
}

/// Optimizes `model` and times one run per iteration.
fn bench_model(
    group: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
    name: &str,
    model: TypedModel,
    inputs: TVec<Tensor>,
) {
    let plan = model.into_optimized().expect("optimizes").into_runnable().expect("plans");
    group.bench_function(name, |b| {
        b.iter(|| plan.run(inputs.iter().map(|t| t.clone().into_tvalue()).collect()).expect("runs"))
    });
}

fn linear(c: &mut Criterion) {
    for (k, n) in [(768, 3072), (3072, 768)] {
        let mut group = c.benchmark_group(format!("linear {TOKENS}x{k}->{n}"));
        group.throughput(Throughput::Elements((TOKENS * k * n) as u64));
        let input = tensor(&[1, TOKENS, k], 1);
        let weight = tensor(&[n, k], 2);
        let bias = tensor(&[n], 3);

        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, TOKENS, k])).expect("source");
        let quantized: Vec<i8> = values(n * k, 2).iter().map(|v| (v * 127.0) as i8).collect();
        let inputs = [
            model
                .add_const("weight", Tensor::from_shape(&[n, k], &quantized).expect("shape"))
                .expect("const"),
            model
                .add_const("scale", Tensor::from_shape(&[n], &vec![0.01f32; n]).expect("shape"))
                .expect("const"),
            model.add_const("bias", bias.clone()).expect("const"),
        ];
        let y = model
            .wire_node("linear", runtime::LinearI8, &[x, inputs[0], inputs[1], inputs[2]])
            .expect("wires");
        model.select_output_outlets(&y).expect("output");
        bench_model(&mut group, "kiln LinearI8", model, tvec!(input.clone()));

        let mut model = TypedModel::default();
        let x = model.add_source("x", f32::fact([1, TOKENS, k])).expect("source");
        let w = model.add_const("weight", weight).expect("const");
        let op = EinSum::new("abi,oi->abo".parse().expect("expr"), f32::datum_type());
        let y = model.wire_node("matmul", op, &[x, w]).expect("wires")[0];
        let b = model.add_const("bias", bias.into_shape(&[1, 1, n]).expect("shape")).expect("const");
        let y = model.wire_node("add_bias", tract_core::ops::math::add(), &[y, b]).expect("wires");
        model.select_output_outlets(&y).expect("output");
        bench_model(&mut group, "tract f32 EinSum + bias", model, tvec!(input));
        group.finish();
    }
}

fn attention(c: &mut Criterion) {
    let shape = [1, TOKENS, 12, 64];
    let mut group = c.benchmark_group(format!("attention {TOKENS} tokens x 12 heads x 64"));
    group.throughput(Throughput::Elements((2 * TOKENS * TOKENS * 12 * 64) as u64));
    let inputs: TVec<Tensor> = (0..3).map(|seed| tensor(&shape, seed)).collect();

    let mut model = TypedModel::default();
    let [q, k, v] = ["q", "k", "v"].map(|name| model.add_source(name, f32::fact(shape)).expect("source"));
    let y = model.wire_node("attention", runtime::Attention, &[q, k, v]).expect("wires");
    model.select_output_outlets(&y).expect("output");
    bench_model(&mut group, "kiln Attention", model, inputs.clone());

    let mut model = TypedModel::default();
    let [q, k, v] = ["q", "k", "v"].map(|name| model.add_source(name, f32::fact(shape)).expect("source"));
    let einsum = |expr: &str| EinSum::new(expr.parse().expect("expr"), f32::datum_type());
    let scores = model.wire_node("scores", einsum("nqhd,nkhd->nhqk"), &[q, k]).expect("wires");
    let softmax = Softmax { axes: tvec!(3), quant_output_dt: None, kind: SoftmaxKind::Softmax };
    let probabilities = model.wire_node("softmax", softmax, &scores).expect("wires")[0];
    let y = model.wire_node("context", einsum("nhqk,nkhd->nqhd"), &[probabilities, v]).expect("wires");
    model.select_output_outlets(&y).expect("output");
    bench_model(&mut group, "tract einsum + softmax + einsum", model, inputs);
    group.finish();
}

criterion_group!(benches, linear, attention);
criterion_main!(benches);
