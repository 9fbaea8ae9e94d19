//! kiln's int8- and bf16-graph operations against the tract operators they replace, on ViT-B/16's
//! shapes, one image on one thread: `cargo bench -p runtime --bench int8_ops`.
//!
//! Each group holds the kiln operations and their tract peer, so the ratio between them is measured in
//! one run (this machine's speed drifts too much for numbers from different runs to compare):
//! - `linear MxK->N` (M = 197 tokens, or 1; K->N = 768->768, 768->3072, 3072->768): [`runtime::LinearI8`]
//!   and [`runtime::LinearBf16`] against tract's f32 linear (EinSum) on the same shape, and the same
//!   f32 graph compiled by [`runtime::optimize`] (kiln's f32 kernel on AVX-512 CPUs); at M = 197 the
//!   bf16 and f32 layers also on two threads (the kernels' throughput on both cores);
//! - `attention 197 tokens x 12 heads x 64`: [`runtime::Attention`] and [`runtime::AttentionBf16`]
//!   against tract's einsum, softmax, einsum.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use tract_core::ops::einsum::EinSum;
use tract_core::ops::nn::{Softmax, SoftmaxKind};
use tract_core::prelude::*;
use tract_linalg::multithread::{Executor, multithread_tract_scope};

const TOKENS: usize = 197;

/// The linear layers' (input, output) widths in ViT-B/16: projections, MLP up and down.
const LINEAR_SHAPES: [(usize, usize); 3] = [(768, 768), (768, 3072), (3072, 768)];

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
    bench_model_on(group, name, model, inputs, Executor::SingleThread)
}

/// [`bench_model`] with the plan run under `executor`.
fn bench_model_on(
    group: &mut criterion::BenchmarkGroup<criterion::measurement::WallTime>,
    name: &str,
    model: TypedModel,
    inputs: TVec<Tensor>,
    executor: Executor,
) {
    let plan = model.into_optimized().expect("optimizes").into_runnable().expect("plans");
    group.bench_function(name, |b| {
        multithread_tract_scope(executor.clone(), || {
            b.iter(|| plan.run(inputs.iter().map(|t| t.clone().into_tvalue()).collect()).expect("runs"))
        })
    });
}

/// A graph of one kiln linear layer `op` over `[1, m, k]` with the given constant operands.
fn kiln_linear(m: usize, k: usize, op: impl Into<Box<dyn TypedOp>>, operands: Vec<Tensor>) -> TypedModel {
    let mut model = TypedModel::default();
    let mut inputs = vec![model.add_source("x", f32::fact([1, m, k])).expect("source")];
    for (ix, operand) in operands.into_iter().enumerate() {
        inputs.push(model.add_const(format!("operand{ix}"), operand).expect("const"));
    }
    let y = model.wire_node("linear", op, &inputs).expect("wires");
    model.select_output_outlets(&y).expect("output");
    model
}

fn linear(c: &mut Criterion) {
    for m in [TOKENS, 1] {
        for (k, n) in LINEAR_SHAPES {
            let mut group = c.benchmark_group(format!("linear {m}x{k}->{n}"));
            group.throughput(Throughput::Elements((m * k * n) as u64));
            let input = tensor(&[1, m, k], 1);
            let weight = tensor(&[n, k], 2);
            let bias = tensor(&[n], 3);

            let quantized: Vec<i8> = values(n * k, 2).iter().map(|v| (v * 127.0) as i8).collect();
            let operands = vec![
                Tensor::from_shape(&[n, k], &quantized).expect("shape"),
                Tensor::from_shape(&[n], &vec![0.01f32; n]).expect("shape"),
                bias.clone(),
            ];
            let model = kiln_linear(m, k, runtime::LinearI8, operands);
            bench_model(&mut group, "kiln LinearI8", model.clone(), tvec!(input.clone()));
            if m > 1 {
                let two = Executor::multithread(2);
                bench_model_on(&mut group, "kiln LinearI8, 2 threads", model, tvec!(input.clone()), two);
            }

            let operands = vec![runtime::LinearBf16::weights(&weight).expect("bf16"), bias.clone()];
            let model = kiln_linear(m, k, runtime::LinearBf16, operands);
            bench_model(&mut group, "kiln LinearBf16", model.clone(), tvec!(input.clone()));
            if m > 1 {
                let two = Executor::multithread(2);
                bench_model_on(&mut group, "kiln LinearBf16, 2 threads", model, tvec!(input.clone()), two);
            }

            let mut model = TypedModel::default();
            let x = model.add_source("x", f32::fact([1, m, k])).expect("source");
            let w = model.add_const("weight", weight).expect("const");
            let op = EinSum::new("abi,oi->abo".parse().expect("expr"), f32::datum_type());
            let y = model.wire_node("matmul", op, &[x, w]).expect("wires")[0];
            let b = model.add_const("bias", bias.into_shape(&[1, 1, n]).expect("shape")).expect("const");
            let y = model.wire_node("add_bias", tract_core::ops::math::add(), &[y, b]).expect("wires");
            model.select_output_outlets(&y).expect("output");
            let plan = runtime::optimize(model.clone()).expect("optimizes").into_runnable().expect("plans");
            let mut runs = vec![("kiln f32 (runtime::optimize)", Executor::SingleThread)];
            if m > 1 {
                runs.push(("kiln f32 (runtime::optimize), 2 threads", Executor::multithread(2)));
            }
            for (name, executor) in runs {
                group.bench_function(name, |b| {
                    multithread_tract_scope(executor.clone(), || {
                        b.iter(|| plan.run(tvec!(input.clone().into_tvalue())).expect("runs"))
                    })
                });
            }
            bench_model(&mut group, "tract f32 EinSum + bias", model, tvec!(input));
            group.finish();
        }
    }
}

fn attention(c: &mut Criterion) {
    let shape = [1, TOKENS, 12, 64];
    let mut group = c.benchmark_group(format!("attention {TOKENS} tokens x 12 heads x 64"));
    group.throughput(Throughput::Elements((2 * TOKENS * TOKENS * 12 * 64) as u64));
    let inputs: TVec<Tensor> = (0..3).map(|seed| tensor(&shape, seed)).collect();

    let attention = |op: Box<dyn TypedOp>| {
        let mut model = TypedModel::default();
        let [q, k, v] = ["q", "k", "v"].map(|name| model.add_source(name, f32::fact(shape)).expect("source"));
        let y = model.wire_node("attention", op, &[q, k, v]).expect("wires");
        model.select_output_outlets(&y).expect("output");
        model
    };
    bench_model(&mut group, "kiln Attention", attention(Box::new(runtime::Attention)), inputs.clone());
    bench_model(
        &mut group,
        "kiln AttentionBf16",
        attention(Box::new(runtime::AttentionBf16)),
        inputs.clone(),
    );

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
