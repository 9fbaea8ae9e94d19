//! `cargo xtask scale [--phase-seconds N] [--clients N]`: a rolling update on loopback. Three `kiln serve`
//! replicas run behind HAProxy (Debian's `haproxy` package; HTTP/1.1 for REST, h2c for gRPC) while REST
//! and gRPC clients send good requests and check every label. The run measures throughput with 1, 2 and
//! 3 replicas in rotation, publishes a new model version, then replaces each replica in turn: the new
//! process starts and must be ready and serving the new version before it gets traffic; the old one is
//! taken out of rotation, left to finish its in-flight requests, stopped with SIGTERM (kiln's drain) and
//! must exit cleanly. Fails unless every request succeeded with the right label and, after the rollout,
//! every gRPC answer came from the new version.
//!
//! Replicas poll their base path once (`--file_system_poll_wait_seconds=0`), so running replicas keep the
//! version they started with and a published version reaches traffic only through the rollout, as in an
//! immutable deployment. HAProxy resends nothing (`retries 0`): zero failures has to come from taking a
//! replica out of rotation before stopping it, not from retrying what it dropped.
//!
//! Clients, request kinds and expected labels are the soak's (see `soak.rs`).

use std::collections::BTreeMap;
use std::fmt;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serve::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient;
use tonic::transport::Channel;

use crate::soak::{self, Cases, Class, Client, MODEL, Payload, Record, percentile};
use crate::{kiln_export, release_kiln, workspace_root};
use kiln_e2e::KilnServer;

/// Replicas in the full deployment.
const REPLICAS: usize = 3;

/// Replicas read their base path once at start: a new version reaches traffic only by a rollout.
const POLL_ONCE: &str = "--file_system_poll_wait_seconds=0";

/// Longest a replica taken out of rotation may take to finish the requests HAProxy already sent it.
const IDLE_WAIT: Duration = Duration::from_secs(30);

/// Longest HAProxy may take to start, or to see a replica put back in rotation as up.
const BALANCER_WAIT: Duration = Duration::from_secs(10);

/// Arguments of `cargo xtask scale`.
#[derive(clap::Args)]
pub struct Args {
    /// Seconds of load with 1, with 2 and with 3 replicas in rotation, and again after the rollout.
    #[arg(long, default_value_t = 15)]
    phase_seconds: u64,
    /// Concurrent clients, half REST and half gRPC.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Checkpoint directory to export and serve [default: fixtures/models/tiny-vit].
    #[arg(long, value_name = "DIR")]
    model: Option<PathBuf>,
}

/// Runs `cargo xtask scale` as parsed into `args`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    ensure!(args.phase_seconds > 0 && args.clients > 0, "--phase-seconds and --clients must be positive");
    let haproxy = haproxy_version()?;
    let root = workspace_root();
    let checkpoint = args.model.clone().unwrap_or_else(|| root.join("fixtures/models/tiny-vit"));
    let kiln = release_kiln()?;

    let scratch = tempfile::tempdir().context("creating the scale job's temp dir")?;
    let base = scratch.path().join(MODEL);
    let first = kiln_export(&kiln, &checkpoint, &base, &[])?;
    let cases = Arc::new(soak::cases(&root, &first, &checkpoint)?);
    println!("exported {}; load balancer: {haproxy}", first.display());

    let deployment = Deployment { kiln, checkpoint, base, scratch: scratch.path().to_owned() };
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let report = runtime.block_on(scale(&deployment, cases, args, haproxy))?;
    println!("{report}");
    report.verdict()
}

/// `haproxy -v`'s first line, or how to install HAProxy.
fn haproxy_version() -> anyhow::Result<String> {
    let output = match Command::new("haproxy").arg("-v").output() {
        Ok(output) => output,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => bail!(
            "haproxy is not on PATH; the scale job needs a real load balancer: \
             `sudo apt-get update && sudo apt-get install -y haproxy` (Debian/Ubuntu)"
        ),
        Err(error) => return Err(error).context("running haproxy -v"),
    };
    ensure!(output.status.success(), "haproxy -v failed ({})", output.status);
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text.lines().next().unwrap_or("HAProxy (unknown version)").trim().to_owned())
}

/// What every replica is started from.
struct Deployment {
    kiln: PathBuf,
    checkpoint: PathBuf,
    base: PathBuf,
    /// Where HAProxy's config, log and admin socket go.
    scratch: PathBuf,
}

impl Deployment {
    async fn start_replica(&self) -> anyhow::Result<KilnServer> {
        KilnServer::start(&self.kiln, MODEL, &self.base, &[POLL_ONCE]).await
    }
}

/// A stretch of the run with a fixed setup, over which throughput and latency are reported.
struct Phase {
    name: String,
    start: Duration,
    end: Duration,
}

/// One replica replaced during the rollout, times from the start of its replacement.
struct Replacement {
    slot: usize,
    /// The new process answered `/readyz` and served only the new version.
    ready: Duration,
    /// HAProxy had no request left in flight on the old replica.
    idle: Duration,
    /// The old replica exited after SIGTERM.
    exited: Duration,
    exit: String,
    /// HAProxy saw the new replica up in both backends.
    in_rotation: Duration,
}

/// A request and when it was sent, from the start of the run.
struct Timed {
    at: Duration,
    record: Record,
}

async fn scale(
    deployment: &Deployment,
    cases: Arc<Cases>,
    args: &Args,
    haproxy: String,
) -> anyhow::Result<Report> {
    let mut replicas = Vec::new();
    for _ in 0..REPLICAS {
        replicas.push(deployment.start_replica().await?);
    }
    let mut balancer = Balancer::start(&deployment.scratch, &replicas)?;
    balancer.wait_ready().await?;
    balancer.wait_up(0).await?;

    let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..args.clients {
        // Even clients speak REST, odd ones gRPC; one gRPC connection each, as separate users would have.
        let rest = client % 2 == 0;
        let channel = Channel::from_shared(balancer.grpc_url())?
            .connect()
            .await
            .context("connecting gRPC to HAProxy")?;
        let client = Client {
            cases: Arc::clone(&cases),
            http: http.clone(),
            grpc: PredictionServiceClient::new(channel).max_decoding_message_size(64 << 20),
            rest_url: balancer.rest_url(),
            rng: 0x9e37_79b9_7f4a_7c15 ^ client as u64,
        };
        clients.spawn(drive(client, rest, started, Arc::clone(&stop)));
    }

    let phase = Duration::from_secs(args.phase_seconds);
    let rollout = roll(deployment, &balancer, &mut replicas, &http, started, phase).await;
    stop.store(true, Ordering::Relaxed);
    let mut records = Vec::new();
    while let Some(result) = clients.join_next().await {
        records.extend(result?);
    }
    let (phases, replacements, version) = rollout?;
    let stats = balancer.stats().await?;

    let mut exits = Vec::new();
    for replica in replicas {
        exits.push(replica.stop().await?.to_string());
    }
    Ok(Report {
        cases,
        records,
        phases,
        replacements,
        version,
        stats,
        exits,
        haproxy,
        rest_url: balancer.rest_url(),
        grpc_url: balancer.grpc_url(),
        clients: args.clients,
    })
}

/// Sends random good requests of one transport until `stop`.
async fn drive(mut client: Client, rest: bool, started: Instant, stop: Arc<AtomicBool>) -> Vec<Timed> {
    let cases = Arc::clone(&client.cases);
    let kinds: Vec<usize> = cases
        .good
        .iter()
        .copied()
        .filter(|&kind| matches!(cases.kinds[kind].payload, Payload::Rest { .. }) == rest)
        .collect();
    let mut records = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        let kind = kinds[(client.next() % kinds.len() as u64) as usize];
        let at = started.elapsed();
        records.push(Timed { at, record: client.send(kind).await });
    }
    records
}

/// The scenario: 1, 2, 3 replicas in rotation, a new version published, every replica replaced, then
/// the new version on all three. Returns the phases, the replacements and the new version.
async fn roll(
    deployment: &Deployment,
    balancer: &Balancer,
    replicas: &mut [KilnServer],
    http: &reqwest::Client,
    started: Instant,
    phase: Duration,
) -> anyhow::Result<(Vec<Phase>, Vec<Replacement>, u64)> {
    let mut phases = Vec::new();
    let measure = |name: String| async move {
        let start = started.elapsed();
        tokio::time::sleep(phase).await;
        Phase { name, start, end: started.elapsed() }
    };
    phases.push(measure("1 replica".into()).await);
    for slot in 1..REPLICAS {
        balancer.set_state(slot, "ready").await?;
        balancer.wait_up(slot).await?;
        phases.push(measure(format!("{} replicas", slot + 1)).await);
    }

    let start = started.elapsed();
    let (kiln, checkpoint, base) =
        (deployment.kiln.clone(), deployment.checkpoint.clone(), deployment.base.clone());
    let dir = tokio::task::spawn_blocking(move || kiln_export(&kiln, &checkpoint, &base, &[]))
        .await?
        .context("publishing a new version mid-run")?;
    let version = dir
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.parse::<u64>().ok())
        .with_context(|| format!("{} is not a version directory", dir.display()))?;
    println!("published version {version} at {:.1} s; rolling it out", started.elapsed().as_secs_f64());
    let mut replacements = Vec::new();
    for (slot, replica) in replicas.iter_mut().enumerate() {
        let begun = Instant::now();
        let new = deployment.start_replica().await?;
        soak::wait_for_swap(http, &new.rest_url(), version)
            .await
            .with_context(|| format!("the replacement for r{} does not serve version {version}", slot + 1))?;
        let ready = begun.elapsed();
        balancer.set_state(slot, "maint").await?;
        balancer.wait_idle(slot).await?;
        let idle = begun.elapsed();
        let exit = std::mem::replace(replica, new).stop().await?;
        ensure!(exit.success(), "replica r{} did not drain and exit cleanly: {exit}", slot + 1);
        let exited = begun.elapsed();
        balancer.point_at(slot, replica).await?;
        balancer.set_state(slot, "ready").await?;
        balancer.wait_up(slot).await?;
        replacements.push(Replacement {
            slot,
            ready,
            idle,
            exited,
            exit: exit.to_string(),
            in_rotation: begun.elapsed(),
        });
        // Like Kubernetes' minReadySeconds: each new replica serves for a while before the next is
        // replaced, so the rollout runs with old and new versions side by side.
        tokio::time::sleep(phase / REPLICAS as u32).await;
    }
    phases.push(Phase { name: format!("rolling update to v{version}"), start, end: started.elapsed() });
    phases.push(measure(format!("3 replicas, v{version}")).await);
    Ok((phases, replacements, version))
}

/// The REST and gRPC ports of a replica, as HAProxy's server lines want them.
fn ports(replica: &KilnServer) -> anyhow::Result<(u16, u16)> {
    let port = |addr: String| -> anyhow::Result<u16> {
        let (_, port) = addr.rsplit_once(':').with_context(|| format!("{addr} has no port"))?;
        port.parse().with_context(|| format!("port of {addr}"))
    };
    Ok((port(replica.rest_addr())?, port(replica.grpc_addr())?))
}

/// HAProxy's configuration: a REST frontend (HTTP/1.1) and a gRPC frontend (h2c), each with one backend
/// holding one server per replica; only the first is in rotation at start. REST servers are health
/// checked on `/readyz`; each gRPC server tracks its replica's REST server, so one readiness signal
/// rules both ports.
fn haproxy_config(socket: &Path, rest_port: u16, grpc_port: u16, replicas: &[(u16, u16)]) -> String {
    let mut config = format!(
        "global\n\
         \x20   stats socket {socket} level admin\n\
         defaults\n\
         \x20   mode http\n\
         \x20   timeout connect 2s\n\
         \x20   timeout client 60s\n\
         \x20   timeout server 60s\n\
         \x20   timeout check 2s\n\
         \x20   retries 0\n\
         frontend rest\n\
         \x20   bind 127.0.0.1:{rest_port}\n\
         \x20   default_backend rest\n\
         frontend grpc\n\
         \x20   bind 127.0.0.1:{grpc_port} proto h2\n\
         \x20   default_backend grpc\n\
         backend rest\n\
         \x20   balance roundrobin\n\
         \x20   option httpchk GET /readyz\n\
         \x20   http-check expect status 200\n",
        socket = socket.display()
    );
    let disabled = |slot: usize| if slot == 0 { "" } else { " disabled" };
    for (slot, (rest, _)) in replicas.iter().enumerate() {
        config += &format!(
            "    server r{} 127.0.0.1:{rest} check inter 250ms fall 2 rise 1{}\n",
            slot + 1,
            disabled(slot)
        );
    }
    config += "backend grpc\n    balance roundrobin\n";
    for (slot, (_, grpc)) in replicas.iter().enumerate() {
        config += &format!(
            "    server r{0} 127.0.0.1:{grpc} proto h2 track rest/r{0}{1}\n",
            slot + 1,
            disabled(slot)
        );
    }
    config
}

/// HAProxy in front of the replicas, steered through its admin socket; killed on drop.
struct Balancer {
    child: Child,
    socket: PathBuf,
    log: PathBuf,
    rest_port: u16,
    grpc_port: u16,
}

impl Balancer {
    /// Writes the config into `dir` and starts `haproxy` in the foreground on two free loopback ports.
    fn start(dir: &Path, replicas: &[KilnServer]) -> anyhow::Result<Balancer> {
        let servers: Vec<(u16, u16)> = replicas.iter().map(ports).collect::<anyhow::Result<_>>()?;
        let (rest_port, grpc_port) = {
            let rest = std::net::TcpListener::bind("127.0.0.1:0")?;
            let grpc = std::net::TcpListener::bind("127.0.0.1:0")?;
            (rest.local_addr()?.port(), grpc.local_addr()?.port())
        };
        let socket = dir.join("haproxy.sock");
        let config = dir.join("haproxy.cfg");
        std::fs::write(&config, haproxy_config(&socket, rest_port, grpc_port, &servers))
            .with_context(|| format!("writing {}", config.display()))?;
        let log = dir.join("haproxy.log");
        let log_file = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new("haproxy")
            .arg("-db")
            .arg("-f")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .spawn()
            .context("starting haproxy")?;
        Ok(Balancer { child, socket, log, rest_port, grpc_port })
    }

    fn rest_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rest_port)
    }

    fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the admin socket answers.
    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        let started = Instant::now();
        while started.elapsed() < BALANCER_WAIT {
            if let Some(status) = self.child.try_wait()? {
                bail!("haproxy exited ({status}):\n{}", self.log());
            }
            if self.command("show info").await.is_ok() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("haproxy's admin socket did not answer within {BALANCER_WAIT:?}:\n{}", self.log())
    }

    /// One admin-socket command and its answer.
    async fn command(&self, command: &str) -> anyhow::Result<String> {
        let (socket, line) = (self.socket.clone(), format!("{command}\n"));
        let answer = tokio::task::spawn_blocking(move || {
            let mut stream = UnixStream::connect(&socket)?;
            stream.set_read_timeout(Some(Duration::from_secs(5)))?;
            stream.write_all(line.as_bytes())?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer)?;
            std::io::Result::Ok(answer)
        })
        .await?;
        answer.with_context(|| format!("haproxy admin socket {}: {command}", self.socket.display()))
    }

    /// Puts replica `slot` in `state` (`ready` or `maint`) in both backends.
    async fn set_state(&self, slot: usize, state: &str) -> anyhow::Result<()> {
        for backend in ["rest", "grpc"] {
            let command = format!("set server {backend}/r{} state {state}", slot + 1);
            let answer = self.command(&command).await?;
            ensure!(answer.trim().is_empty(), "haproxy refused `{command}`: {}", answer.trim());
        }
        Ok(())
    }

    /// Points server `slot` of both backends at `replica`'s ports.
    async fn point_at(&self, slot: usize, replica: &KilnServer) -> anyhow::Result<()> {
        let (rest, grpc) = ports(replica)?;
        for (backend, port) in [("rest", rest), ("grpc", grpc)] {
            let command = format!("set server {backend}/r{} addr 127.0.0.1 port {port}", slot + 1);
            let answer = self.command(&command).await?;
            ensure!(
                answer.contains("changed") || answer.contains("no need"),
                "haproxy refused `{command}`: {}",
                answer.trim()
            );
        }
        Ok(())
    }

    /// Waits until HAProxy reports replica `slot` up in both backends.
    async fn wait_up(&self, slot: usize) -> anyhow::Result<()> {
        self.wait_for(slot, BALANCER_WAIT, "up", |row| row.status.starts_with("UP")).await
    }

    /// Waits until replica `slot` has no request queued or in flight in either backend.
    async fn wait_idle(&self, slot: usize) -> anyhow::Result<()> {
        self.wait_for(slot, IDLE_WAIT, "idle", |row| row.in_flight == 0 && row.queued == 0).await
    }

    async fn wait_for(
        &self,
        slot: usize,
        limit: Duration,
        what: &str,
        done: impl Fn(&ServerStat) -> bool,
    ) -> anyhow::Result<()> {
        let name = format!("r{}", slot + 1);
        let started = Instant::now();
        let mut last = Vec::new();
        while started.elapsed() < limit {
            last = self.stats().await?;
            let rows: Vec<&ServerStat> = last.iter().filter(|row| row.server == name).collect();
            if rows.len() == 2 && rows.iter().all(|row| done(row)) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("haproxy did not report {name} {what} within {limit:?}: {last:?}")
    }

    /// Every server row of `show stat`.
    async fn stats(&self) -> anyhow::Result<Vec<ServerStat>> {
        parse_stats(&self.command("show stat").await?)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The counters of one server in one backend, from HAProxy's `show stat` CSV.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ServerStat {
    backend: String,
    server: String,
    status: String,
    queued: u64,
    in_flight: u64,
    /// Requests sent to it over the whole run.
    total: u64,
    /// Connection errors, response errors, retries, redispatches.
    connect_errors: u64,
    response_errors: u64,
    retries: u64,
    redispatches: u64,
}

/// The server rows (not FRONTEND/BACKEND totals) of `show stat` output.
fn parse_stats(csv: &str) -> anyhow::Result<Vec<ServerStat>> {
    let mut lines = csv.lines();
    let header = lines.next().and_then(|h| h.strip_prefix("# ")).context("show stat: no header line")?;
    let columns: Vec<&str> = header.split(',').collect();
    let column = |name: &str| {
        columns.iter().position(|c| *c == name).with_context(|| format!("show stat: no {name} column"))
    };
    let [pxname, svname, status, qcur, scur, stot, econ, eresp, wretr, wredis] =
        ["pxname", "svname", "status", "qcur", "scur", "stot", "econ", "eresp", "wretr", "wredis"]
            .map(column);
    let (pxname, svname, status) = (pxname?, svname?, status?);
    let (qcur, scur, stot, econ, eresp, wretr, wredis) =
        (qcur?, scur?, stot?, econ?, eresp?, wretr?, wredis?);
    let mut rows = Vec::new();
    for line in lines.filter(|line| !line.trim().is_empty()) {
        let fields: Vec<&str> = line.split(',').collect();
        let field = |index: usize| fields.get(index).copied().unwrap_or_default();
        if matches!(field(svname), "FRONTEND" | "BACKEND") {
            continue;
        }
        let count = |index: usize| -> anyhow::Result<u64> {
            let text = field(index);
            if text.is_empty() { Ok(0) } else { text.parse().with_context(|| format!("show stat: {line}")) }
        };
        rows.push(ServerStat {
            backend: field(pxname).to_owned(),
            server: field(svname).to_owned(),
            status: field(status).to_owned(),
            queued: count(qcur)?,
            in_flight: count(scur)?,
            total: count(stot)?,
            connect_errors: count(econ)?,
            response_errors: count(eresp)?,
            retries: count(wretr)?,
            redispatches: count(wredis)?,
        });
    }
    Ok(rows)
}

/// Everything the run measured.
struct Report {
    cases: Arc<Cases>,
    records: Vec<Timed>,
    phases: Vec<Phase>,
    replacements: Vec<Replacement>,
    /// The version published mid-run.
    version: u64,
    stats: Vec<ServerStat>,
    /// How the final replicas exited.
    exits: Vec<String>,
    haproxy: String,
    rest_url: String,
    grpc_url: String,
    clients: usize,
}

/// Counts over a set of requests.
#[derive(Default)]
struct Tally {
    requests: usize,
    /// Answered with anything but OK, or not answered.
    failed: usize,
    /// Answered OK with another label than the artifact's.
    wrong: usize,
}

impl Report {
    fn in_phase<'a>(&'a self, phase: &'a Phase) -> impl Iterator<Item = &'a Record> + 'a {
        self.records.iter().filter(|t| t.at >= phase.start && t.at < phase.end).map(|t| &t.record)
    }

    fn tally<'a>(records: impl Iterator<Item = &'a Record>) -> Tally {
        let mut tally = Tally::default();
        for record in records {
            tally.requests += 1;
            match record.class {
                Class::Ok if !record.correct => tally.wrong += 1,
                Class::Ok => {}
                _ => tally.failed += 1,
            }
        }
        tally
    }

    fn is_rest(&self, record: &Record) -> bool {
        matches!(self.cases.kinds[record.kind].payload, Payload::Rest { .. })
    }

    /// The gRPC answers of the last phase that came from another version than the published one.
    fn stale_after_rollout(&self) -> (usize, usize) {
        let Some(last) = self.phases.last() else { return (0, 0) };
        let versions: Vec<Option<i64>> =
            self.in_phase(last).filter_map(|r| (!self.is_rest(r)).then_some(r.version)).collect();
        let stale = versions.iter().filter(|v| **v != Some(self.version as i64)).count();
        (stale, versions.len())
    }

    fn verdict(&self) -> anyhow::Result<()> {
        let total = Self::tally(self.records.iter().map(|t| &t.record));
        let mut failures = Vec::new();
        if total.failed > 0 {
            failures.push(format!("{} failed requests", total.failed));
        }
        if total.wrong > 0 {
            failures.push(format!("{} wrong answers", total.wrong));
        }
        let (stale, grpc) = self.stale_after_rollout();
        if grpc == 0 || stale > 0 {
            failures.push(format!(
                "{stale} of {grpc} gRPC answers after the rollout did not come from version {}",
                self.version
            ));
        }
        if failures.is_empty() { Ok(()) } else { bail!("scale failed: {}", failures.join("; ")) }
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        writeln!(
            f,
            "\nscale: {REPLICAS} kiln serve replicas behind {} (REST HTTP/1.1 {}, gRPC h2c {}), \
             {} clients (half REST, half gRPC), {cores} cores shared by everything",
            self.haproxy, self.rest_url, self.grpc_url, self.clients
        )?;
        writeln!(
            f,
            "{:<26} {:>6} {:>9} {:>7} {:>6} {:>8} {:>17} {:>17}  gRPC answers by version",
            "phase", "s", "requests", "failed", "wrong", "req/s", "REST p50/p99 ms", "gRPC p50/p99 ms"
        )?;
        for phase in &self.phases {
            let tally = Self::tally(self.in_phase(phase));
            let seconds = (phase.end - phase.start).as_secs_f64();
            let latency = |rest: bool| {
                let mut list: Vec<Duration> =
                    self.in_phase(phase).filter(|r| self.is_rest(r) == rest).map(|r| r.latency).collect();
                list.sort();
                format!("{:.1} / {:.1}", ms(percentile(&list, 50)), ms(percentile(&list, 99)))
            };
            let mut versions: BTreeMap<i64, usize> = BTreeMap::new();
            for version in self.in_phase(phase).filter_map(|r| r.version) {
                *versions.entry(version).or_insert(0) += 1;
            }
            writeln!(
                f,
                "{:<26} {seconds:>6.1} {:>9} {:>7} {:>6} {:>8.1} {:>17} {:>17}  {versions:?}",
                phase.name,
                tally.requests,
                tally.failed,
                tally.wrong,
                tally.requests as f64 / seconds,
                latency(true),
                latency(false)
            )?;
        }
        let total = Self::tally(self.records.iter().map(|t| &t.record));
        writeln!(
            f,
            "total: {} requests, {} failed, {} wrong answers",
            total.requests, total.failed, total.wrong
        )?;
        let mut failed: BTreeMap<String, usize> = BTreeMap::new();
        for record in self.records.iter().map(|t| &t.record).filter(|r| r.class != Class::Ok || !r.correct) {
            let name = &self.cases.kinds[record.kind].name;
            *failed.entry(format!("{name} -> {}", record.class)).or_insert(0) += 1;
        }
        for (name, count) in failed {
            writeln!(f, "unexpected answer x{count}: {name}")?;
        }
        for r in &self.replacements {
            writeln!(
                f,
                "replaced r{}: new replica ready on v{} after {:.2} s, old one out of rotation and idle at \
                 {:.2} s, exited after SIGTERM at {:.2} s ({}), new one in rotation at {:.2} s",
                r.slot + 1,
                self.version,
                r.ready.as_secs_f64(),
                r.idle.as_secs_f64(),
                r.exited.as_secs_f64(),
                r.exit,
                r.in_rotation.as_secs_f64()
            )?;
        }
        for row in &self.stats {
            writeln!(
                f,
                "haproxy {}/{}: {} requests, {}, connect errors {}, response errors {}, retries {}, redispatches {}",
                row.backend,
                row.server,
                row.total,
                row.status,
                row.connect_errors,
                row.response_errors,
                row.retries,
                row.redispatches
            )?;
        }
        write!(f, "final replicas exited: {}", self.exits.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_stat_rows_are_read_by_column_name() -> anyhow::Result<()> {
        let csv = "# pxname,svname,qcur,qmax,scur,smax,slim,stot,bin,bout,dreq,dresp,ereq,econ,eresp,wretr,wredis,status,\n\
                   rest,FRONTEND,,,0,1,262,5,0,0,0,0,0,,,,,OPEN,\n\
                   rest,r1,0,0,2,3,,40,0,0,,0,,1,2,3,4,UP,\n\
                   grpc,r2,0,0,0,0,,0,0,0,,0,,0,0,0,0,MAINT,\n\
                   rest,BACKEND,0,0,2,3,26,40,0,0,0,0,,1,2,3,4,UP,\n";
        let rows = parse_stats(csv)?;
        assert_eq!(rows.len(), 2);
        assert_eq!(
            rows[0],
            ServerStat {
                backend: "rest".into(),
                server: "r1".into(),
                status: "UP".into(),
                queued: 0,
                in_flight: 2,
                total: 40,
                connect_errors: 1,
                response_errors: 2,
                retries: 3,
                redispatches: 4,
            }
        );
        assert_eq!(rows[1].status, "MAINT");
        Ok(())
    }

    #[test]
    fn only_the_first_replica_starts_in_rotation() {
        let config = haproxy_config(Path::new("/tmp/s.sock"), 1, 2, &[(10, 20), (11, 21), (12, 22)]);
        assert!(config.contains("server r1 127.0.0.1:10 check inter 250ms fall 2 rise 1\n"));
        assert!(config.contains("server r2 127.0.0.1:11 check inter 250ms fall 2 rise 1 disabled\n"));
        assert!(config.contains("server r3 127.0.0.1:22 proto h2 track rest/r3 disabled\n"));
        assert!(config.contains("bind 127.0.0.1:2 proto h2\n"));
        assert!(config.contains("retries 0\n"));
    }
}
