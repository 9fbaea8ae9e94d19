//! Single-request latency of REST and gRPC predict against an in-process server, interleaved so machine
//! speed drift hits both alike, next to the runtime's own prepare + infer time for the same image; then
//! REST and gRPC throughput at 1, 8 and 32 concurrent clients with batching off and on (`--enable_batching`'s
//! defaults), each followed by the runtime's own throughput at the same batch size, so drift hits both.
//!
//! `cargo run --release -p serve --example latency -- <model base dir> <image> [requests] [seconds]`

use std::path::PathBuf;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serve::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient;
use serve::proto::tensorflow::serving::{ModelSpec, PredictRequest};
use serve::proto::tensorflow::{DataType, TensorProto, TensorShapeProto, tensor_shape_proto};
use serve::{BatchingParameters, ModelConfig, Server, ServerOptions, VersionState};

type Result<T> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

fn percentile(samples: &mut [Duration], p: f64) -> f64 {
    samples.sort();
    let index = ((samples.len() as f64 - 1.0) * p).round() as usize;
    samples[index].as_secs_f64() * 1e3
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let (Some(base), Some(image)) = (args.next(), args.next()) else {
        return Err("usage: latency <model base dir> <image> [requests]".into());
    };
    let requests: usize = args.next().map(|n| n.parse()).transpose()?.unwrap_or(200);
    let seconds = Duration::from_secs_f64(args.next().map(|n| n.parse()).transpose()?.unwrap_or(3.0));
    let bytes = std::fs::read(&image)?;
    let text = base64::engine::general_purpose::STANDARD.encode(&bytes);

    let mut options = ServerOptions::new(vec![ModelConfig::new("vit", PathBuf::from(&base))]);
    options.grpc_addr = Some("127.0.0.1:0".parse()?);
    options.rest_addr = Some("127.0.0.1:0".parse()?);
    let server = Server::start(options).await?;
    while !server.model_status("vit").iter().any(|s| s.state == VersionState::Available) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rest_url = format!("http://{}/v1/models/vit:predict", server.rest_addr().ok_or("no REST")?);
    let http = reqwest::Client::new();
    let body = serde_json::to_vec(&serde_json::json!({"instances": [text]}))?;
    let mut grpc =
        PredictionServiceClient::connect(format!("http://{}", server.grpc_addr().ok_or("no gRPC")?)).await?;
    let request = PredictRequest {
        model_spec: Some(ModelSpec { name: "vit".into(), ..Default::default() }),
        inputs: [(
            "string_input".to_owned(),
            TensorProto {
                dtype: DataType::DtString as i32,
                tensor_shape: Some(TensorShapeProto {
                    dim: vec![tensor_shape_proto::Dim { size: 1, name: String::new() }],
                    unknown_rank: false,
                }),
                string_val: vec![text.clone().into_bytes()],
                ..Default::default()
            },
        )]
        .into(),
        output_filter: vec![],
    };
    let model = runtime::Model::load(runtime_dir(&base)?)?;

    let (mut rest, mut rpc, mut local) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..requests + 10 {
        let started = Instant::now();
        let response = http.post(&rest_url).body(body.clone()).send().await?;
        if !response.status().is_success() {
            return Err(format!("REST answered {}", response.status()).into());
        }
        response.bytes().await?;
        let rest_time = started.elapsed();
        let started = Instant::now();
        grpc.predict(request.clone()).await?;
        let rpc_time = started.elapsed();
        let started = Instant::now();
        model.predict(&[text.as_bytes()])?;
        let local_time = started.elapsed();
        // The first rounds warm connections and caches.
        if i >= 10 {
            rest.push(rest_time);
            rpc.push(rpc_time);
            local.push(local_time);
        }
    }
    println!("{requests} sequential single-image requests, {} ({} bytes)", image, bytes.len());
    for (name, samples) in [("REST", &mut rest), ("gRPC", &mut rpc), ("in-process", &mut local)] {
        println!(
            "{name:>10}: p50 {:.3} ms  p90 {:.3} ms  p99 {:.3} ms",
            percentile(samples, 0.5),
            percentile(samples, 0.9),
            percentile(samples, 0.99)
        );
    }
    server.shutdown().await;

    for batching in [None, Some(BatchingParameters::default())] {
        let label = if batching.is_some() { "batching on" } else { "batching off" };
        let mut options = ServerOptions::new(vec![ModelConfig::new("vit", PathBuf::from(&base))]);
        options.grpc_addr = Some("127.0.0.1:0".parse()?);
        options.rest_addr = Some("127.0.0.1:0".parse()?);
        options.batching = batching;
        let server = Server::start(options).await?;
        while !server.is_ready() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let url = format!("http://{}/v1/models/vit:predict", server.rest_addr().ok_or("no REST")?);
        let grpc_url = format!("http://{}", server.grpc_addr().ok_or("no gRPC")?);
        for clients in [1, 8, 32] {
            let rest = rest_throughput(&url, &body, clients, seconds).await?;
            let rpc = grpc_throughput(&grpc_url, &request, clients, seconds).await?;
            let local = runtime_throughput(&model, text.as_bytes(), clients, seconds)?;
            println!(
                "{label:>12}, {clients:>2} clients: REST {rest:6.1}  gRPC {rpc:6.1}  in-process batch {clients:>2} {local:6.1} images/s"
            );
        }
        server.shutdown().await;
    }
    Ok(())
}

/// Images per second the runtime alone gets running batches of `batch` copies of `input` for `duration`.
fn runtime_throughput(model: &runtime::Model, input: &[u8], batch: usize, duration: Duration) -> Result<f64> {
    let inputs: Vec<&[u8]> = vec![input; batch];
    let started = Instant::now();
    let mut images = 0;
    while started.elapsed() < duration {
        model.predict(&inputs)?;
        images += batch;
    }
    Ok(images as f64 / started.elapsed().as_secs_f64())
}

/// Images per second `clients` concurrent gRPC clients (one channel each) get for `duration`.
async fn grpc_throughput(
    url: &str,
    request: &PredictRequest,
    clients: usize,
    duration: Duration,
) -> Result<f64> {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut client = PredictionServiceClient::connect(url.to_owned()).await?;
        let request = request.clone();
        tasks.push(tokio::spawn(async move {
            let mut done = 0usize;
            while started.elapsed() < duration {
                client.predict(request.clone()).await?;
                done += 1;
            }
            Ok::<usize, Box<dyn std::error::Error + Send + Sync>>(done)
        }));
    }
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// Images per second `clients` concurrent REST clients get for `duration`.
async fn rest_throughput(url: &str, body: &[u8], clients: usize, duration: Duration) -> Result<f64> {
    let started = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let (url, body, http) = (url.to_owned(), body.to_vec(), reqwest::Client::new());
            tokio::spawn(async move {
                let mut done = 0usize;
                while started.elapsed() < duration {
                    let response = http.post(&url).body(body.clone()).send().await?;
                    if !response.status().is_success() {
                        return Err(format!("REST answered {}", response.status()).into());
                    }
                    response.bytes().await?;
                    done += 1;
                }
                Ok::<usize, Box<dyn std::error::Error + Send + Sync>>(done)
            })
        })
        .collect();
    let mut total = 0;
    for task in tasks {
        total += task.await??;
    }
    Ok(total as f64 / started.elapsed().as_secs_f64())
}

/// The highest version directory under `base`, as the server serves it.
fn runtime_dir(base: &str) -> Result<PathBuf> {
    Ok(artifact::resolve_dir(base)?)
}
