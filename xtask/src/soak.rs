//! `cargo xtask soak --seconds N [--model DIR]`: drives a real `kiln serve` on loopback with concurrent
//! REST and gRPC clients, 70 % good and 30 % bad requests, publishes a new version half-way through, and
//! fails unless every good request got the right label, every bad one its documented error class, the
//! new version took over, the server stayed up and exited cleanly, and its RSS stayed within a bound.
//!
//! The expected label of each good image comes from the exported artifact run in-process with
//! `runtime::Model` (and, for the fixture model, is checked against `fixtures/reference/tiny-vit.json`),
//! so a wrong answer means the server disagrees with the library it wraps.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use base64::Engine as _;
use serve::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient;
use serve::proto::tensorflow::serving::{ModelSpec, PredictRequest, model_spec};
use serve::proto::tensorflow::{DataType, TensorProto};
use tonic::transport::Channel;

use crate::demo::string_tensor;
use crate::{kiln_export, release_kiln, workspace_root};
use kiln_e2e::KilnServer;

/// The served model's name.
pub(crate) const MODEL: &str = "vit";

/// Percentage of requests that are good.
const GOOD_PERCENT: u64 = 70;

/// Arguments of `cargo xtask soak`.
#[derive(clap::Args)]
pub struct Args {
    /// How long the clients send requests.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Checkpoint directory to export and serve [default: fixtures/models/tiny-vit].
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
    /// New versions published during the run, evenly spaced (each a fresh export to the same base).
    #[arg(long, default_value_t = 1)]
    swaps: u32,
    /// Concurrent clients, half REST and half gRPC.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Largest allowed growth of the server's resident memory from start to end, in MiB. Start is
    /// measured after a warm-up round in which every client sent one request of each kind, so the
    /// allocator's per-thread arenas and connection buffers already exist; what grows after that is
    /// what a long-running server would leak.
    #[arg(long, default_value_t = 64)]
    max_rss_growth_mib: u64,
    /// Largest allowed growth of the server's resident memory from after the first version swap to
    /// after the last, in MiB: each swap loads a model and unloads one, so this stays flat unless
    /// versions leave something behind (threads, allocator arenas, the old graph).
    #[arg(long, default_value_t = 16)]
    max_swap_rss_growth_mib: u64,
}

/// Runs `cargo xtask soak` as parsed into `args`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(args.seconds > 0 && args.clients > 0, "--seconds and --clients must be positive");
    let root = workspace_root();
    let checkpoint = args.model.clone().unwrap_or_else(|| root.join("fixtures/models/tiny-vit"));
    let kiln = release_kiln()?;

    let scratch = tempfile::tempdir().context("creating the soak's temp dir")?;
    let base = scratch.path().join(MODEL);
    let first = kiln_export(&kiln, &checkpoint, &base, &[])?;
    let cases = Arc::new(cases(&root, &first, &checkpoint)?);
    println!(
        "exported {} ({} good images, {} bad request kinds)",
        first.display(),
        cases.good_images(),
        cases.kinds.iter().filter(|k| !k.expect.is_good()).count()
    );

    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = runtime.block_on(soak(&kiln, &checkpoint, &base, cases, args))?;
    println!("{report}");
    report.verdict(args)
}

/// Which answer a request must get.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expect {
    /// Success with this label for every instance.
    Label(String),
    /// This error class.
    Error(Class),
}

impl Expect {
    fn is_good(&self) -> bool {
        matches!(self, Expect::Label(_))
    }
}

/// How a request ended, by the status clients branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Class {
    Ok,
    /// HTTP 400 / INVALID_ARGUMENT or FAILED_PRECONDITION.
    BadRequest,
    /// HTTP 404 / NOT_FOUND.
    NotFound,
    /// HTTP 413 / RESOURCE_EXHAUSTED for size.
    TooLarge,
    /// HTTP 429 / RESOURCE_EXHAUSTED: load shedding, legitimate for any request.
    Overloaded,
    /// HTTP 503 / UNAVAILABLE.
    Unavailable,
    /// Any other HTTP status or gRPC code.
    Other,
    /// No answer: connection refused or reset, timeout.
    Transport,
}

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Class::Ok => "ok",
            Class::BadRequest => "400/INVALID_ARGUMENT",
            Class::NotFound => "404/NOT_FOUND",
            Class::TooLarge => "413",
            Class::Overloaded => "429/RESOURCE_EXHAUSTED",
            Class::Unavailable => "503/UNAVAILABLE",
            Class::Other => "other status",
            Class::Transport => "no answer",
        })
    }
}

fn http_class(status: u16) -> Class {
    match status {
        200 => Class::Ok,
        400 => Class::BadRequest,
        404 => Class::NotFound,
        413 => Class::TooLarge,
        429 => Class::Overloaded,
        503 => Class::Unavailable,
        _ => Class::Other,
    }
}

fn grpc_class(code: tonic::Code) -> Class {
    match code {
        tonic::Code::Ok => Class::Ok,
        tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition => Class::BadRequest,
        tonic::Code::NotFound => Class::NotFound,
        tonic::Code::ResourceExhausted => Class::Overloaded,
        tonic::Code::Unavailable => Class::Unavailable,
        _ => Class::Other,
    }
}

/// One request, prepared before the clock starts so the clients spend their CPU on sending.
pub(crate) enum Payload {
    /// A JSON body for `POST /v1/models/<model>:predict`.
    Rest { model: &'static str, body: Vec<u8> },
    /// A Predict call.
    Grpc(PredictRequest),
}

/// A kind of request with its expected answer.
pub(crate) struct Kind {
    pub(crate) name: String,
    pub(crate) payload: Payload,
    expect: Expect,
}

/// All request kinds; clients draw good ones with [`GOOD_PERCENT`] probability.
pub(crate) struct Cases {
    pub(crate) kinds: Vec<Kind>,
    pub(crate) good: Vec<usize>,
    bad: Vec<usize>,
}

impl Cases {
    fn good_images(&self) -> usize {
        self.good.len() / 4
    }
}

fn predict_request(model: &str, tensor: TensorProto) -> PredictRequest {
    PredictRequest {
        model_spec: Some(ModelSpec {
            name: model.into(),
            signature_name: "serving_default".into(),
            version_choice: None,
        }),
        inputs: [("string_input".to_owned(), tensor)].into(),
        output_filter: vec![],
    }
}

/// The good images (every top-level image in `fixtures/images`, each sent four ways) with labels from
/// the artifact run in-process, and the bad requests of the serve README's bad-input table that a soak
/// can repeat cheaply.
pub(crate) fn cases(root: &Path, version_dir: &Path, checkpoint: &Path) -> anyhow::Result<Cases> {
    let images_dir = root.join("fixtures/images");
    let mut images: Vec<(String, Vec<u8>)> = Vec::new();
    for entry in
        std::fs::read_dir(&images_dir).with_context(|| format!("listing {}", images_dir.display()))?
    {
        let path = entry?.path();
        if path.is_file() {
            let name = path.file_name().and_then(|n| n.to_str()).context("image name")?.to_owned();
            images.push((name, std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?));
        }
    }
    images.sort();
    let model = runtime::Model::load(version_dir).context("loading the exported artifact in-process")?;
    let inputs: Vec<&[u8]> = images.iter().map(|(_, bytes)| bytes.as_slice()).collect();
    let predictions = model.predict(&inputs).context("predicting in-process")?;
    let mut expected = BTreeMap::new();
    for ((name, _), prediction) in images.iter().zip(predictions) {
        let prediction = prediction.with_context(|| format!("{name} fails in-process"))?;
        expected.insert(name.clone(), prediction.label);
    }
    check_reference(root, checkpoint, &expected)?;

    let standard = base64::engine::general_purpose::STANDARD;
    let url_safe = base64::engine::general_purpose::URL_SAFE;
    let json = |value: serde_json::Value| value.to_string().into_bytes();
    let mut kinds = Vec::new();
    for (name, bytes) in &images {
        let expect = Expect::Label(expected[name].clone());
        let text = url_safe.encode(bytes);
        kinds.push(Kind {
            name: format!("REST text {name}"),
            payload: Payload::Rest { model: MODEL, body: json(serde_json::json!({"instances": [text]})) },
            expect: expect.clone(),
        });
        kinds.push(Kind {
            name: format!("REST b64 {name}"),
            payload: Payload::Rest {
                model: MODEL,
                body: json(serde_json::json!({"instances": [{"b64": standard.encode(bytes)}]})),
            },
            expect: expect.clone(),
        });
        kinds.push(Kind {
            name: format!("gRPC raw {name}"),
            payload: Payload::Grpc(predict_request(MODEL, string_tensor(bytes.clone()))),
            expect: expect.clone(),
        });
        kinds.push(Kind {
            name: format!("gRPC text {name}"),
            payload: Payload::Grpc(predict_request(MODEL, string_tensor(text.into_bytes()))),
            expect,
        });
    }

    let bad_dir = images_dir.join("bad");
    let truncated = std::fs::read(bad_dir.join("truncated.jpg")).context("reading bad/truncated.jpg")?;
    let huge =
        std::fs::read(bad_dir.join("huge-65535x65535.jpg")).context("reading bad/huge-65535x65535.jpg")?;
    let rest = |name: &str, model: &'static str, body: Vec<u8>, class: Class| Kind {
        name: format!("REST {name}"),
        payload: Payload::Rest { model, body },
        expect: Expect::Error(class),
    };
    let grpc = |name: &str, request: PredictRequest, class: Class| Kind {
        name: format!("gRPC {name}"),
        payload: Payload::Grpc(request),
        expect: Expect::Error(class),
    };
    let bad_request = Class::BadRequest;
    let mut float = string_tensor(Vec::new());
    float.dtype = DataType::DtFloat as i32;
    float.string_val.clear();
    float.float_val = vec![1.0];
    let bad = vec![
        rest(
            "truncated JPEG",
            MODEL,
            json(serde_json::json!({"instances": [{"b64": standard.encode(&truncated)}]})),
            bad_request,
        ),
        rest(
            "65535x65535 header",
            MODEL,
            json(serde_json::json!({"instances": [{"b64": standard.encode(&huge)}]})),
            bad_request,
        ),
        rest("invalid base64", MODEL, json(serde_json::json!({"instances": ["not*base64"]})), bad_request),
        rest("empty string", MODEL, json(serde_json::json!({"instances": [""]})), bad_request),
        rest("malformed JSON", MODEL, br#"{"instances": ["aGk="#.to_vec(), bad_request),
        rest(
            "deeply nested JSON",
            MODEL,
            format!("{{\"instances\": {}{}}}", "[".repeat(5000), "]".repeat(5000)).into_bytes(),
            bad_request,
        ),
        rest(
            "unknown signature",
            MODEL,
            json(serde_json::json!({"signature_name": "nope", "instances": ["aGk="]})),
            bad_request,
        ),
        rest(
            "unknown model",
            "no-such-model",
            json(serde_json::json!({"instances": ["aGk="]})),
            Class::NotFound,
        ),
        grpc("truncated JPEG", predict_request(MODEL, string_tensor(truncated)), bad_request),
        grpc("random bytes", predict_request(MODEL, string_tensor((0..=255u8).rev().collect())), bad_request),
        grpc("wrong dtype", predict_request(MODEL, float), bad_request),
        grpc(
            "unknown model",
            predict_request("no-such-model", string_tensor(b"aGk=".to_vec())),
            Class::NotFound,
        ),
    ];
    let good: Vec<usize> = (0..kinds.len()).collect();
    kinds.extend(bad);
    let bad: Vec<usize> = (good.len()..kinds.len()).collect();
    Ok(Cases { kinds, good, bad })
}

/// For a fixture checkpoint with a reference file, the in-process labels must equal the reference
/// model's: otherwise the expected answers themselves would be wrong.
fn check_reference(
    root: &Path,
    checkpoint: &Path,
    expected: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let Some(name) = checkpoint.file_name().and_then(|n| n.to_str()) else {
        return Ok(());
    };
    let path = root.join("fixtures/reference").join(format!("{name}.json"));
    if !path.is_file()
        || checkpoint.canonicalize()? != root.join("fixtures/models").join(name).canonicalize()?
    {
        return Ok(());
    }
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?,
    )?;
    let images = reference["images"].as_array().context("reference: images")?;
    for entry in images {
        let image = entry["image"].as_str().context("reference: image")?;
        let label = entry["label"].as_str().context("reference: label")?;
        let file = image.rsplit('/').next().unwrap_or(image);
        if let Some(ours) = expected.get(file) {
            ensure!(ours == label, "{file}: kiln's runtime says {ours:?}, the reference model {label:?}");
        }
    }
    Ok(())
}

/// What one client saw for one request.
pub(crate) struct Record {
    pub(crate) kind: usize,
    pub(crate) class: Class,
    /// For good requests answered OK: whether the label matched.
    pub(crate) correct: bool,
    pub(crate) latency: Duration,
    /// The version a gRPC response named.
    pub(crate) version: Option<i64>,
}

async fn soak(
    kiln: &Path,
    checkpoint: &Path,
    base: &Path,
    cases: Arc<Cases>,
    args: &Args,
) -> anyhow::Result<Report> {
    let mut server = KilnServer::start(kiln, MODEL, base, &[]).await?;
    let pid = server.pid();
    let rss_ready = rss_kib(pid)?;
    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let channel = Channel::from_shared(server.grpc_url())?.connect().await.context("connecting gRPC")?;
    let rest_url = server.rest_url();

    // Warm-up: every client sends each kind once, so connections, per-thread allocator arenas and the
    // server's first-request paths exist before the start RSS is taken.
    let warmup = run_clients(&cases, args.clients, &http, &channel, &rest_url, Deadline::Rounds(1)).await?;
    let rss_start = rss_kib(pid)?;

    let started = Instant::now();
    let duration = Duration::from_secs(args.seconds);
    let swaps = {
        let (kiln, checkpoint, base) = (kiln.to_path_buf(), checkpoint.to_path_buf(), base.to_path_buf());
        let count = args.swaps;
        let (http, rest_url) = (http.clone(), rest_url.clone());
        tokio::task::spawn(async move {
            let mut swaps = Vec::new();
            for swap in 1..=count {
                let at = duration * swap / (count + 1);
                tokio::time::sleep(at.saturating_sub(started.elapsed())).await;
                let (kiln, checkpoint, base) = (kiln.clone(), checkpoint.clone(), base.clone());
                let exported =
                    tokio::task::spawn_blocking(move || kiln_export(&kiln, &checkpoint, &base, &[])).await?;
                let dir = exported.context("exporting a new version mid-soak")?;
                let published = started.elapsed();
                let version = dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<u64>().ok());
                let version =
                    version.with_context(|| format!("{} is not a version directory", dir.display()))?;
                let swapped = wait_for_swap(&http, &rest_url, version).await?;
                let rss = rss_kib(pid)?;
                swaps.push(Swap { started: at, published, swapped, rss, dir });
            }
            anyhow::Ok(swaps)
        })
    };
    let sampler = tokio::task::spawn(async move {
        let mut samples = Vec::new();
        while started.elapsed() < duration {
            if let Ok(rss) = rss_kib(pid) {
                samples.push((started.elapsed(), rss));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        samples
    });
    let records =
        run_clients(&cases, args.clients, &http, &channel, &rest_url, Deadline::At(started + duration))
            .await?;
    let elapsed = started.elapsed();
    let swaps = swaps.await??;
    let rss_samples = sampler.await?;
    let rss_end = rss_kib(pid)?;
    let alive = server.is_running()?;
    let exit = server.stop().await?;
    Ok(Report {
        cases,
        records,
        warmup_requests: warmup.len(),
        elapsed,
        swaps,
        rss_ready,
        rss_start,
        rss_samples,
        rss_end,
        alive,
        exit_ok: exit.success(),
        exit: exit.to_string(),
    })
}

/// When the clients stop.
#[derive(Clone, Copy)]
enum Deadline {
    /// After sending every kind this many times each.
    Rounds(usize),
    At(Instant),
}

async fn run_clients(
    cases: &Arc<Cases>,
    clients: usize,
    http: &reqwest::Client,
    channel: &Channel,
    rest_url: &str,
    deadline: Deadline,
) -> anyhow::Result<Vec<Record>> {
    let mut tasks = tokio::task::JoinSet::new();
    for client in 0..clients {
        let cases = Arc::clone(cases);
        let http = http.clone();
        let grpc = PredictionServiceClient::new(channel.clone()).max_decoding_message_size(64 << 20);
        let rest_url = rest_url.to_owned();
        // Even clients speak REST, odd ones gRPC; each kind is only sent over its own transport.
        let rest_client = client % 2 == 0;
        tasks.spawn(async move {
            let mut client =
                Client { cases, http, grpc, rest_url, rng: 0x9e37_79b9_7f4a_7c15 ^ client as u64 };
            client.run(rest_client, deadline).await
        });
    }
    let mut records = Vec::new();
    while let Some(result) = tasks.join_next().await {
        records.extend(result?);
    }
    Ok(records)
}

pub(crate) struct Client {
    pub(crate) cases: Arc<Cases>,
    pub(crate) http: reqwest::Client,
    pub(crate) grpc: PredictionServiceClient<Channel>,
    pub(crate) rest_url: String,
    pub(crate) rng: u64,
}

impl Client {
    /// xorshift64: a fixed sequence per client without a dependency.
    pub(crate) fn next(&mut self) -> u64 {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        self.rng
    }

    async fn run(&mut self, rest: bool, deadline: Deadline) -> Vec<Record> {
        let mine = |list: &[usize], cases: &Cases| -> Vec<usize> {
            list.iter()
                .copied()
                .filter(|&k| matches!(cases.kinds[k].payload, Payload::Rest { .. }) == rest)
                .collect()
        };
        let good = mine(&self.cases.good, &self.cases);
        let bad = mine(&self.cases.bad, &self.cases);
        let mut records = Vec::new();
        match deadline {
            Deadline::Rounds(rounds) => {
                for kind in good.iter().chain(&bad).copied().cycle().take(rounds * (good.len() + bad.len())) {
                    records.push(self.send(kind).await);
                }
            }
            Deadline::At(end) => {
                while Instant::now() < end {
                    let list = if self.next() % 100 < GOOD_PERCENT { &good } else { &bad };
                    let kind = list[(self.next() % list.len() as u64) as usize];
                    records.push(self.send(kind).await);
                }
            }
        }
        records
    }

    pub(crate) async fn send(&mut self, kind: usize) -> Record {
        let started = Instant::now();
        let cases = Arc::clone(&self.cases);
        let case = &cases.kinds[kind];
        let (class, label, version) = match &case.payload {
            Payload::Rest { model, body } => self.rest(model, body.clone()).await,
            Payload::Grpc(request) => self.grpc(request.clone()).await,
        };
        let correct = match (&case.expect, &label) {
            (Expect::Label(expected), Some(label)) => expected == label,
            _ => false,
        };
        Record { kind, class, correct, latency: started.elapsed(), version }
    }

    async fn rest(&self, model: &str, body: Vec<u8>) -> (Class, Option<String>, Option<i64>) {
        let url = format!("{}/v1/models/{model}:predict", self.rest_url);
        let response =
            match self.http.post(url).header("content-type", "application/json").body(body).send().await {
                Ok(response) => response,
                Err(_) => return (Class::Transport, None, None),
            };
        let class = http_class(response.status().as_u16());
        let Ok(text) = response.text().await else {
            return (Class::Transport, None, None);
        };
        let label = serde_json::from_str::<serde_json::Value>(&text)
            .ok()
            .and_then(|value| value["predictions"][0]["label"].as_str().map(str::to_owned));
        (class, label, None)
    }

    async fn grpc(&mut self, request: PredictRequest) -> (Class, Option<String>, Option<i64>) {
        match self.grpc.predict(request).await {
            Ok(response) => {
                let response = response.into_inner();
                let label = response
                    .outputs
                    .get("label")
                    .and_then(|tensor| tensor.string_val.first())
                    .map(|bytes| String::from_utf8_lossy(bytes).into_owned());
                let version = match response.model_spec.and_then(|spec| spec.version_choice) {
                    Some(model_spec::VersionChoice::Version(version)) => Some(version),
                    _ => None,
                };
                (Class::Ok, label, version)
            }
            Err(status)
                if status.code() == tonic::Code::Unknown && status.message().contains("transport") =>
            {
                (Class::Transport, None, None)
            }
            Err(status) => (grpc_class(status.code()), None, None),
        }
    }
}

/// Waits until `version` is the only version of the served model left (available, the previous one
/// unloaded) and returns when that was seen, from the start of the wait.
pub(crate) async fn wait_for_swap(
    http: &reqwest::Client,
    rest_url: &str,
    version: u64,
) -> anyhow::Result<Duration> {
    let url = format!("{rest_url}/v1/models/{MODEL}");
    let waited = Instant::now();
    let mut last = String::new();
    while waited.elapsed() < Duration::from_secs(60) {
        if let Ok(response) = http.get(&url).send().await {
            last = response.text().await.unwrap_or_default();
            let status: serde_json::Value = serde_json::from_str(&last).unwrap_or_default();
            let live: Vec<(&str, &str)> = status["model_version_status"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|v| Some((v["version"].as_str()?, v["state"].as_str()?)))
                .filter(|&(_, state)| state != "END")
                .collect();
            if live == [(version.to_string().as_str(), "AVAILABLE")] {
                return Ok(waited.elapsed());
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("version {version} did not replace the served one within 60 s; last status: {last}")
}

/// `VmRSS` of a process in KiB, from `/proc/<pid>/status`.
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    let line = status.lines().find_map(|line| line.strip_prefix("VmRSS:")).context("no VmRSS line")?;
    let kib = line.trim().trim_end_matches("kB").trim();
    kib.parse().with_context(|| format!("VmRSS {kib:?}"))
}

/// One version published during the run.
struct Swap {
    /// When the export started, from the start of the run.
    started: Duration,
    /// When the export had published the version.
    published: Duration,
    /// How long after publishing the server served only this version.
    swapped: Duration,
    /// The server's `VmRSS` in KiB at that moment.
    rss: u64,
    dir: PathBuf,
}

/// Everything the soak measured.
struct Report {
    cases: Arc<Cases>,
    records: Vec<Record>,
    warmup_requests: usize,
    elapsed: Duration,
    swaps: Vec<Swap>,
    rss_ready: u64,
    rss_start: u64,
    /// `(time since start, VmRSS KiB)` every half second.
    rss_samples: Vec<(Duration, u64)>,
    rss_end: u64,
    alive: bool,
    exit_ok: bool,
    exit: String,
}

/// The failure counts the verdict is made of.
#[derive(Default)]
struct Tally {
    /// Good requests answered OK with another label, or bad requests answered OK.
    wrong_answers: usize,
    /// Good requests refused with anything but load shedding.
    good_failed: usize,
    /// Bad requests refused with another class than documented (load shedding aside).
    bad_misclassified: usize,
}

impl Report {
    fn tally(&self) -> Tally {
        let mut tally = Tally::default();
        for record in &self.records {
            match (&self.cases.kinds[record.kind].expect, record.class) {
                (Expect::Label(_), Class::Ok) if !record.correct => tally.wrong_answers += 1,
                (Expect::Label(_), Class::Ok | Class::Overloaded) => {}
                (Expect::Label(_), _) => tally.good_failed += 1,
                (Expect::Error(_), Class::Ok) => tally.wrong_answers += 1,
                (Expect::Error(expected), class) if *expected != class && class != Class::Overloaded => {
                    tally.bad_misclassified += 1;
                }
                (Expect::Error(_), _) => {}
            }
        }
        tally
    }

    /// Kinds that got an answer the verdict counts against the server, with how often.
    fn failures_by_kind(&self) -> BTreeMap<String, usize> {
        let mut kinds = BTreeMap::new();
        for record in &self.records {
            let kind = &self.cases.kinds[record.kind];
            let fine = match (&kind.expect, record.class) {
                (_, Class::Overloaded) => true,
                (Expect::Label(_), Class::Ok) => record.correct,
                (Expect::Error(expected), class) => *expected == class,
                (Expect::Label(_), _) => false,
            };
            if !fine {
                *kinds.entry(format!("{} -> {}", kind.name, record.class)).or_insert(0) += 1;
            }
        }
        kinds
    }

    /// How many gRPC answers named each version.
    fn grpc_versions(&self) -> BTreeMap<i64, usize> {
        let mut versions = BTreeMap::new();
        for record in &self.records {
            if let Some(version) = record.version {
                *versions.entry(version).or_insert(0) += 1;
            }
        }
        versions
    }

    /// RSS after the last swap minus RSS after the first, in KiB.
    fn swap_rss_growth_kib(&self) -> Option<i64> {
        let (first, last) = (self.swaps.first()?, self.swaps.last()?);
        Some(last.rss as i64 - first.rss as i64)
    }

    fn verdict(&self, args: &Args) -> anyhow::Result<()> {
        let tally = self.tally();
        let growth_kib = self.rss_end.saturating_sub(self.rss_start);
        let mut failures = Vec::new();
        if tally.wrong_answers > 0 {
            failures.push(format!("{} wrong answers", tally.wrong_answers));
        }
        if tally.good_failed > 0 {
            failures.push(format!("{} good requests failed", tally.good_failed));
        }
        if tally.bad_misclassified > 0 {
            failures.push(format!("{} bad requests got an undocumented status", tally.bad_misclassified));
        }
        if growth_kib > args.max_rss_growth_mib * 1024 {
            failures.push(format!(
                "RSS grew {} MiB, above the bound of {} MiB",
                growth_kib / 1024,
                args.max_rss_growth_mib
            ));
        }
        if let Some(growth_kib) = self.swap_rss_growth_kib()
            && growth_kib > args.max_swap_rss_growth_mib as i64 * 1024
        {
            failures.push(format!(
                "RSS grew {} MiB from the first version swap to the last, above the bound of {} MiB",
                growth_kib / 1024,
                args.max_swap_rss_growth_mib
            ));
        }
        if let Some(last) = self.swaps.last() {
            let number = last.dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.parse::<i64>().ok());
            if number.is_none_or(|n| !self.grpc_versions().contains_key(&n)) {
                failures
                    .push(format!("no gRPC answer came from the last new version {}", last.dir.display()));
            }
        }
        if !self.alive || !self.exit_ok {
            failures.push(format!("the server did not stay up and stop cleanly (exit {})", self.exit));
        }
        if failures.is_empty() { Ok(()) } else { bail!("soak failed: {}", failures.join("; ")) }
    }
}

/// `p` in 0..=100 of sorted latencies, nearest rank.
pub(crate) fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (sorted.len() * p).div_ceil(100).max(1);
    sorted[rank - 1]
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let tally = self.tally();
        let total = self.records.len();
        let seconds = self.elapsed.as_secs_f64();
        writeln!(
            f,
            "\nsoak: {total} requests in {seconds:.1} s ({:.1}/s), after {} warm-up requests",
            total as f64 / seconds,
            self.warmup_requests
        )?;
        let mut by_class: BTreeMap<(bool, &str, Class), usize> = BTreeMap::new();
        let mut latencies: BTreeMap<(bool, &str), Vec<Duration>> = BTreeMap::new();
        for record in &self.records {
            let kind = &self.cases.kinds[record.kind];
            let transport = if matches!(kind.payload, Payload::Rest { .. }) { "REST" } else { "gRPC" };
            let good = kind.expect.is_good();
            *by_class.entry((good, transport, record.class)).or_insert(0) += 1;
            latencies.entry((good, transport)).or_default().push(record.latency);
        }
        writeln!(f, "{:<6} {:<5} {:<24} {:>8}", "", "", "answer", "requests")?;
        for ((good, transport, class), count) in &by_class {
            let side = if *good { "good" } else { "bad" };
            writeln!(f, "{side:<6} {transport:<5} {:<24} {count:>8}", class.to_string())?;
        }
        writeln!(f, "{:<6} {:<5} {:>10} {:>10} {:>10}", "", "", "p50 ms", "p99 ms", "max ms")?;
        for ((good, transport), list) in &mut latencies {
            list.sort();
            let side = if *good { "good" } else { "bad" };
            let ms = |d: Duration| d.as_secs_f64() * 1000.0;
            writeln!(
                f,
                "{side:<6} {transport:<5} {:>10.1} {:>10.1} {:>10.1}",
                ms(percentile(list, 50)),
                ms(percentile(list, 99)),
                ms(list.last().copied().unwrap_or_default())
            )?;
        }
        for (name, count) in self.failures_by_kind() {
            writeln!(f, "unexpected answer x{count}: {name}")?;
        }
        writeln!(f, "wrong answers: {}", tally.wrong_answers)?;
        writeln!(f, "good requests failed (not load shedding): {}", tally.good_failed)?;
        writeln!(f, "bad requests with an undocumented status: {}", tally.bad_misclassified)?;
        for swap in &self.swaps {
            writeln!(
                f,
                "version swap: export started at {:.1} s, published {} at {:.1} s, served alone {:.1} s later, RSS {:.1} MiB",
                swap.started.as_secs_f64(),
                swap.dir.display(),
                swap.published.as_secs_f64(),
                swap.swapped.as_secs_f64(),
                swap.rss as f64 / 1024.0
            )?;
        }
        if let (Some(first), Some(last), Some(growth)) =
            (self.swaps.first(), self.swaps.last(), self.swap_rss_growth_kib())
        {
            writeln!(
                f,
                "RSS after swap 1: {:.1} MiB, after swap {}: {:.1} MiB; growth {:+.1} MiB",
                first.rss as f64 / 1024.0,
                self.swaps.len(),
                last.rss as f64 / 1024.0,
                growth as f64 / 1024.0
            )?;
        }
        writeln!(f, "gRPC answers by version: {:?}", self.grpc_versions())?;
        let mib = |kib: u64| kib as f64 / 1024.0;
        let peak =
            self.rss_samples.iter().map(|&(_, kib)| kib).chain([self.rss_end]).max().unwrap_or_default();
        writeln!(
            f,
            "RSS: {:.1} MiB ready, {:.1} MiB start (after warm-up), {:.1} MiB peak, {:.1} MiB end; growth {:+.1} MiB",
            mib(self.rss_ready),
            mib(self.rss_start),
            mib(peak),
            mib(self.rss_end),
            mib(self.rss_end) - mib(self.rss_start)
        )?;
        // Every tenth of the run, so a leak (steady climb) and a one-off step (the new version) look different.
        let step = (self.rss_samples.len() / 10).max(1);
        let timeline: Vec<String> = self
            .rss_samples
            .iter()
            .step_by(step)
            .map(|(at, kib)| format!("{:.0}s {:.1}", at.as_secs_f64(), mib(*kib)))
            .collect();
        writeln!(f, "RSS timeline (MiB): {}", timeline.join(", "))?;
        write!(f, "server: {} during the run, then {}", if self.alive { "up" } else { "DOWN" }, self.exit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let sorted: Vec<Duration> = (1..=200).map(Duration::from_millis).collect();
        assert_eq!(percentile(&sorted, 50), Duration::from_millis(100));
        assert_eq!(percentile(&sorted, 99), Duration::from_millis(198));
        assert_eq!(percentile(&sorted[..1], 99), Duration::from_millis(1));
        assert_eq!(percentile(&[], 50), Duration::ZERO);
    }

    #[test]
    fn statuses_map_to_the_classes_the_verdict_uses() {
        assert_eq!(http_class(200), Class::Ok);
        assert_eq!(http_class(429), Class::Overloaded);
        assert_eq!(http_class(500), Class::Other);
        assert_eq!(grpc_class(tonic::Code::FailedPrecondition), Class::BadRequest);
        assert_eq!(grpc_class(tonic::Code::ResourceExhausted), Class::Overloaded);
    }

    #[test]
    fn vmrss_is_read_from_proc() -> anyhow::Result<()> {
        let kib = rss_kib(std::process::id())?;
        assert!(kib > 0, "VmRSS {kib} KiB");
        Ok(())
    }
}
