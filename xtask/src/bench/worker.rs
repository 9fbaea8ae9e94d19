//! The kiln side of `cargo xtask bench`, run as the hidden `xtask bench-worker` from a release build so
//! the runtime is measured as users get it.
//!
//! It speaks the same line protocol as `xtask/bench/engines.py`: one JSON command per line on stdin, one
//! JSON reply per line on stdout. Engines: `kiln`, `kiln-int8` and `kiln-bf16` (model only, prepared
//! fixture images), `kiln-e2e` (base64 JPEG strings -> labels through [`Model::predict`]), `kiln-prep`
//! (one image's decode + resize) and `kiln-serve`, `kiln-serve-int8` and `kiln-serve-bf16` (concurrent
//! REST clients of a running `kiln serve` of that precision's artifact).

use std::collections::BTreeMap;
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use base64::Engine as _;
use runtime::{Model, PreparedImage, RuntimeOptions};
use serde_json::{Value, json};

/// Arguments of the hidden `xtask bench-worker`.
#[derive(clap::Args)]
pub struct WorkerArgs {
    /// Load one engine, run one batch-1 inference, print load time and peak RSS, and exit.
    #[arg(long, value_name = "ENGINE")]
    cold: Option<String>,
    /// Artifact version directory per precision, as `PRECISION=DIR` (`f32=...`, `int8=...`).
    #[arg(long = "artifact", value_name = "PRECISION=DIR")]
    artifacts: Vec<String>,
    /// Images the engines cycle through.
    #[arg(long = "image", value_name = "FILE")]
    images: Vec<PathBuf>,
    /// Threads each matrix multiplication may use.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// REST predict URL of a running `kiln serve` per precision, as `PRECISION=URL`: the `kiln-serve`
    /// engines send to the one of their precision.
    #[arg(long = "server", value_name = "PRECISION=URL")]
    servers: Vec<String>,
}

/// One loaded engine of this worker.
enum Engine {
    /// Boxed: a loaded model is several times the size of the REST clients.
    InProcess(Box<InProcess>),
    Served(Clients),
}

impl Engine {
    fn load(name: &str, args: &WorkerArgs) -> Result<Engine> {
        let served = match name {
            "kiln-serve" => Some("f32"),
            "kiln-serve-int8" => Some("int8"),
            "kiln-serve-bf16" => Some("bf16"),
            _ => None,
        };
        if let Some(precision) = served {
            return Clients::connect(precision, args).map(Engine::Served);
        }
        InProcess::load(name, args).map(|engine| Engine::InProcess(Box::new(engine)))
    }

    /// One call on `batch` inputs; returns its seconds.
    fn run(&mut self, batch: usize) -> Result<f64> {
        match self {
            Engine::InProcess(engine) => engine.run(batch),
            Engine::Served(clients) => clients.run(batch),
        }
    }
}

/// One loaded kiln model and the inputs it cycles through.
struct InProcess {
    model: Model,
    kind: Kind,
    strings: Vec<Vec<u8>>,
    prepared: Vec<PreparedImage>,
    next: usize,
}

#[derive(Clone, Copy)]
enum Kind {
    ModelOnly,
    EndToEnd,
    Preprocess,
}

impl InProcess {
    fn load(name: &str, args: &WorkerArgs) -> Result<InProcess> {
        let (precision, kind) = match name {
            "kiln" => ("f32", Kind::ModelOnly),
            "kiln-int8" => ("int8", Kind::ModelOnly),
            "kiln-bf16" => ("bf16", Kind::ModelOnly),
            "kiln-e2e" => ("f32", Kind::EndToEnd),
            "kiln-prep" => ("f32", Kind::Preprocess),
            other => bail!("unknown engine {other:?}"),
        };
        let dir = PathBuf::from(given(&args.artifacts, "--artifact", precision)?);
        let options = RuntimeOptions { threads: args.threads, max_batch: 64, ..RuntimeOptions::default() };
        let model = Model::load_with(&dir, options).with_context(|| format!("loading {}", dir.display()))?;
        let strings: Vec<Vec<u8>> = encoded(&args.images)?.into_iter().map(String::into_bytes).collect();
        let prepared = strings
            .iter()
            .map(|s| model.prepare(s))
            .collect::<Result<Vec<_>, _>>()
            .context("preparing the benchmark images")?;
        if prepared.is_empty() {
            bail!("the kiln engines need at least one --image");
        }
        Ok(InProcess { model, kind, strings, prepared, next: 0 })
    }

    /// One call on `batch` inputs; returns its seconds. Model-only calls exclude gathering the inputs.
    fn run(&mut self, batch: usize) -> Result<f64> {
        let count = self.prepared.len();
        let picked: Vec<usize> = (0..batch).map(|i| (self.next + i) % count).collect();
        self.next += batch;
        let images: Vec<PreparedImage> = match self.kind {
            Kind::ModelOnly => picked.iter().map(|&i| self.prepared[i].clone()).collect(),
            Kind::EndToEnd | Kind::Preprocess => vec![],
        };
        let started = Instant::now();
        match self.kind {
            Kind::ModelOnly => {
                std::hint::black_box(self.model.infer(&images)?);
            }
            Kind::EndToEnd => {
                let inputs: Vec<&[u8]> = picked.iter().map(|&i| self.strings[i].as_slice()).collect();
                for outcome in self.model.predict(&inputs)? {
                    std::hint::black_box(outcome?);
                }
            }
            Kind::Preprocess => {
                for &i in &picked {
                    std::hint::black_box(self.model.prepare(&self.strings[i])?);
                }
            }
        }
        Ok(started.elapsed().as_secs_f64())
    }
}

/// `batch` concurrent REST clients of a running `kiln serve`, each sending one base64 JPEG per call, as
/// TF Serving's `{"instances": [{"b64": ...}]}`; a call lasts until the last answer is in.
struct Clients {
    runtime: tokio::runtime::Runtime,
    http: reqwest::Client,
    url: String,
    bodies: Vec<Vec<u8>>,
    next: usize,
}

impl Clients {
    fn connect(precision: &str, args: &WorkerArgs) -> Result<Clients> {
        let url = given(&args.servers, "--server", precision)?;
        let bodies = encoded(&args.images)?
            .into_iter()
            .map(|b64| serde_json::to_vec(&json!({"instances": [{"b64": b64}]})))
            .collect::<Result<Vec<_>, _>>()?;
        if bodies.is_empty() {
            bail!("kiln-serve needs at least one --image");
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        Ok(Clients { runtime, http: reqwest::Client::new(), url, bodies, next: 0 })
    }

    fn run(&mut self, clients: usize) -> Result<f64> {
        let picked: Vec<Vec<u8>> =
            (0..clients).map(|i| self.bodies[(self.next + i) % self.bodies.len()].clone()).collect();
        self.next += clients;
        let started = Instant::now();
        self.runtime.block_on(async {
            let mut requests = tokio::task::JoinSet::new();
            for body in picked {
                let request =
                    self.http.post(&self.url).header("content-type", "application/json").body(body).send();
                requests.spawn(async move {
                    let response = request.await?;
                    let status = response.status();
                    let text = response.text().await?;
                    anyhow::ensure!(status.is_success(), "kiln serve answered {status}: {text}");
                    Ok(())
                });
            }
            while let Some(outcome) = requests.join_next().await {
                outcome??;
            }
            Ok::<_, anyhow::Error>(())
        })?;
        Ok(started.elapsed().as_secs_f64())
    }
}

/// The files as the base64 strings a client sends.
fn encoded(images: &[PathBuf]) -> Result<Vec<String>> {
    images
        .iter()
        .map(|path| {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Ok(base64::engine::general_purpose::STANDARD.encode(bytes))
        })
        .collect()
}

/// The value of `precision` among a repeated `flag`'s `PRECISION=VALUE` arguments.
fn given(values: &[String], flag: &str, precision: &str) -> Result<String> {
    values
        .iter()
        .filter_map(|a| a.split_once('='))
        .find(|(p, _)| *p == precision)
        .map(|(_, value)| value.to_owned())
        .with_context(|| format!("no {flag} {precision}=... given"))
}

/// Runs the worker: one cold measurement, or the command loop.
pub fn run(args: &WorkerArgs) -> Result<()> {
    if let Some(engine) = &args.cold {
        let started = Instant::now();
        let mut engine = Engine::load(engine, args)?;
        let loaded = started.elapsed().as_secs_f64();
        let first = engine.run(1)?;
        return reply(&json!({"load_s": loaded, "first_s": first, "peak_rss_mb": peak_rss_mb()?}));
    }
    let mut engines: BTreeMap<String, Engine> = BTreeMap::new();
    for line in std::io::stdin().lock().lines() {
        let command: Value = serde_json::from_str(&line.context("reading a command")?)?;
        let outcome = execute(&command, &mut engines, args);
        match outcome {
            Ok(None) => return reply(&json!({})),
            Ok(Some(answer)) => reply(&answer)?,
            Err(error) => reply(&json!({"error": format!("{error:#}")}))?,
        }
    }
    Ok(())
}

/// Executes one command; `None` means quit.
fn execute(
    command: &Value,
    engines: &mut BTreeMap<String, Engine>,
    args: &WorkerArgs,
) -> Result<Option<Value>> {
    let name = command["engine"].as_str().unwrap_or_default();
    match command["op"].as_str() {
        Some("load") => {
            let started = Instant::now();
            engines.insert(name.to_owned(), Engine::load(name, args)?);
            Ok(Some(json!({"seconds": started.elapsed().as_secs_f64()})))
        }
        Some("run") => {
            let engine = engines.get_mut(name).with_context(|| format!("engine {name:?} is not loaded"))?;
            let batch = command["batch"].as_u64().context("run needs a batch")? as usize;
            let iters = command["iters"].as_u64().context("run needs iters")?;
            let mut latencies = Vec::with_capacity(iters as usize);
            for _ in 0..iters {
                latencies.push(engine.run(batch)?);
            }
            Ok(Some(json!({"latencies": latencies})))
        }
        Some("quit") => Ok(None),
        other => bail!("unknown op {other:?}"),
    }
}

fn reply(value: &Value) -> Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{value}")?;
    out.flush()?;
    Ok(())
}

/// The process's peak resident set (VmHWM), in MiB.
fn peak_rss_mb() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .context("no VmHWM in /proc/self/status")?;
    Ok(kib / 1024.0)
}
