//! Where an artifact's compiled graph spends its time, per node and per operator kind.
//!
//! `cargo run --release -p runtime --example profile -- <version-dir> [batch] [runs] [threads]`
//!
//! Compiles the artifact's graph as the runtime does (decluttered, optimized for this machine), runs it
//! on random pixels with each node's evaluation timed, and prints the operator kinds by total time and
//! the slowest nodes. `KILN_PROFILE_DUMP=1` also prints the optimized graph, node by node.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tract_core::internal::*;
use tract_core::model::translator::Translate;
use tract_linalg::multithread::Executor;

/// The kiln binary's allocator: with glibc's, large activations went back to the kernel between runs and
/// page faults took a tenth of a batch-8 run.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> TractResult<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir = std::path::PathBuf::from(
        args.first().context("usage: profile <version-dir> [batch] [runs] [threads]")?,
    );
    let batch: usize = args.get(1).map_or(Ok(1), |a| a.parse())?;
    let runs: usize = args.get(2).map_or(Ok(3), |a| a.parse())?;
    let threads: usize = args.get(3).map_or(Ok(2), |a| a.parse())?;
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json"))?)?;
    let graph = dir.join(manifest["graph"]["file"].as_str().context("graph.file")?);
    let side = manifest["graph"]["width"].as_u64().context("graph.width")? as usize;
    let started = Instant::now();
    let mut model = runtime::nnef().model_for_path(&graph)?;
    if std::env::var_os("KILN_PROFILE_CONCRETE").is_some() {
        let n = model.symbols.sym("N");
        let values: HashMap<Symbol, TDim> = HashMap::from([(n, TDim::Val(batch as i64))]);
        model = values.translate_model(&model)?;
    }
    let optimized = runtime::optimize(model)?;
    eprintln!("optimized in {:.2}s", started.elapsed().as_secs_f64());
    if std::env::var_os("KILN_PROFILE_DUMP").is_some() {
        for node in optimized.nodes() {
            let shape = node.outputs.first().map(|o| format!("{:?}", o.fact)).unwrap_or_default();
            let info = node.op.info().unwrap_or_default().join("; ");
            println!("{:>5} {:<50} {} -> {shape} {info}", node.id, node.name, node.op);
        }
    }
    let plan = optimized.into_runnable()?;
    let mut state = SimpleState::new(&plan)?;
    let pixels: Vec<u8> = (0..batch * side * side * 3).map(|i| (i * 7919 % 251) as u8).collect();
    let input = Tensor::from_shape(&[batch, side, side, 3], &pixels)?;
    // One thread runs on the calling thread: a one-worker pool would add a hand-off per matmul and
    // a spinning second thread.
    let executor = if threads <= 1 { Executor::SingleThread } else { Executor::multithread(threads) };
    let mut per_node: BTreeMap<usize, Duration> = BTreeMap::new();
    let mut totals = vec![];
    let mut outputs = tvec![];
    for run in 0..=runs {
        let started = Instant::now();
        let mut timings: Vec<(usize, Duration)> = vec![];
        // As `Model` runs an image: on one of the pool's threads, the others awake.
        outputs = runtime::run_on(&executor, || {
            state.run_plan_with_eval(tvec!(input.clone().into_tvalue()), |session, op_state, node, inputs| {
                let started = Instant::now();
                let outputs = tract_core::plan::eval(session, op_state, node, inputs);
                timings.push((node.id, started.elapsed()));
                outputs
            })
        })?;
        // The first run warms caches and allocations up and is not counted, but its time is the
        // first request's latency.
        if run == 0 {
            println!("first run: {:.1} ms", started.elapsed().as_secs_f64() * 1e3);
        } else {
            totals.push(started.elapsed());
            for (id, elapsed) in timings {
                *per_node.entry(id).or_default() += elapsed;
            }
        }
    }
    let total: Duration = totals.iter().sum::<Duration>() / runs as u32;
    println!(
        "batch {batch}, {threads} threads: {:.1} ms per run, {:.2} images/s",
        total.as_secs_f64() * 1e3,
        batch as f64 / total.as_secs_f64()
    );
    // On a shared host the mean moves with the neighbours' load (5-15 % between rounds here); the
    // fastest run moves less.
    let fastest = totals.iter().min().copied().unwrap_or_default();
    println!("fastest run: {:.1} ms", fastest.as_secs_f64() * 1e3);
    // A hash of the outputs' bits, so that two builds' plans can be compared exactly.
    for (ix, output) in outputs.iter().enumerate() {
        use std::hash::{Hash, Hasher};
        let values = output.cast_to::<f32>()?;
        let mut hasher = std::hash::DefaultHasher::new();
        values.try_as_plain_ram()?.as_slice::<f32>()?.iter().for_each(|v| v.to_bits().hash(&mut hasher));
        println!("output {ix}: {} values, bits hash {:016x}", values.len(), hasher.finish());
    }
    let mut per_kind: BTreeMap<String, (Duration, usize)> = BTreeMap::new();
    for (&id, &elapsed) in &per_node {
        let entry = per_kind.entry(plan.model().node(id).op.name().to_string()).or_default();
        entry.0 += elapsed / runs as u32;
        entry.1 += 1;
    }
    let mut kinds: Vec<_> = per_kind.into_iter().collect();
    kinds.sort_by_key(|k| std::cmp::Reverse(k.1.0));
    println!("\n{:<24} {:>10} {:>7} {:>6}", "operator", "ms/run", "share", "nodes");
    for (kind, (elapsed, count)) in &kinds {
        println!(
            "{kind:<24} {:>10.2} {:>6.1}% {count:>6}",
            elapsed.as_secs_f64() * 1e3,
            100.0 * elapsed.as_secs_f64() / total.as_secs_f64()
        );
    }
    let mut nodes: Vec<_> = per_node.into_iter().collect();
    nodes.sort_by_key(|n| std::cmp::Reverse(n.1));
    println!("\nslowest nodes");
    let top = std::env::var("KILN_PROFILE_TOP").ok().and_then(|t| t.parse().ok()).unwrap_or(25);
    for (id, elapsed) in nodes.iter().take(top) {
        let node = plan.model().node(*id);
        println!("{:>9.2} ms  {:<40} {}", elapsed.as_secs_f64() * 1e3 / runs as f64, node.name, node.op);
    }
    Ok(())
}
