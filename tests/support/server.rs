//! A `kiln serve` child process on loopback ports, driven the way users and orchestrators do: through its
//! sockets, `/readyz` for readiness and SIGTERM to stop. Shared by the end-to-end tests and the xtask jobs
//! that talk to a real server (demo, client-compat, soak).

use std::io::Read;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

/// How long the server may take to load and warm its model before `start` gives up.
const READY_WAIT: Duration = Duration::from_secs(120);

/// How many times `start` picks new ports after losing a race for one.
const PORT_ATTEMPTS: usize = 3;

/// A running `kiln serve`; killed on drop unless it was stopped. Its stderr (the log) is collected.
pub struct KilnServer {
    child: Child,
    grpc_port: u16,
    rest_port: u16,
    log: Arc<Mutex<String>>,
    /// `http`, or what [`KilnServer::start_with`] was given.
    scheme: &'static str,
    /// The client readiness is polled with (it trusts the server's CA when TLS is on).
    http: reqwest::Client,
}

impl KilnServer {
    /// Starts `kiln serve --model_name model --model_base_path base extra...` on two free loopback ports
    /// and waits until `/readyz` answers 200. `kiln serve`, like TF Serving, reads port 0 as "disabled",
    /// so the ports are picked here; a lost race shows as "cannot listen on" and is retried.
    pub async fn start(kiln: &Path, model: &str, base: &Path, extra: &[&str]) -> anyhow::Result<KilnServer> {
        Self::start_with(kiln, model, base, extra, reqwest::Client::new(), "http").await
    }

    /// [`KilnServer::start`] with `env` added to the child's environment (object-store credentials and
    /// endpoints, as a deployment passes them).
    pub async fn start_with_env(
        kiln: &Path,
        model: &str,
        base: &Path,
        extra: &[&str],
        env: &[(String, String)],
    ) -> anyhow::Result<KilnServer> {
        Self::launch(kiln, model, base, extra, env, reqwest::Client::new(), "http").await
    }

    /// [`KilnServer::start`] for a server whose ports speak `scheme` (`https` with `--ssl_config_file`),
    /// polling `/readyz` with `http`, a client that trusts the server's certificate.
    pub async fn start_with(
        kiln: &Path,
        model: &str,
        base: &Path,
        extra: &[&str],
        http: reqwest::Client,
        scheme: &'static str,
    ) -> anyhow::Result<KilnServer> {
        Self::launch(kiln, model, base, extra, &[], http, scheme).await
    }

    async fn launch(
        kiln: &Path,
        model: &str,
        base: &Path,
        extra: &[&str],
        env: &[(String, String)],
        http: reqwest::Client,
        scheme: &'static str,
    ) -> anyhow::Result<KilnServer> {
        let mut last_log = String::new();
        for _attempt in 0..PORT_ATTEMPTS {
            let (grpc_port, rest_port) = free_ports()?;
            let mut server = Self::spawn(kiln, model, base, extra, env, grpc_port, rest_port)?;
            server.scheme = scheme;
            server.http = http.clone();
            if server.wait_ready().await? {
                return Ok(server);
            }
            last_log = server.log();
            if !last_log.contains("cannot listen on") {
                break;
            }
        }
        bail!("kiln serve exited before it was ready:\n{last_log}")
    }

    /// Starts `kiln serve` on the given ports (TF Serving's 8500/8501 for clients with fixed addresses).
    pub async fn start_on(
        kiln: &Path,
        model: &str,
        base: &Path,
        grpc_port: u16,
        rest_port: u16,
    ) -> anyhow::Result<KilnServer> {
        let mut server = Self::spawn(kiln, model, base, &[], &[], grpc_port, rest_port)?;
        ensure!(
            server.wait_ready().await?,
            "kiln serve exited before it was ready on ports {grpc_port}/{rest_port}:\n{}",
            server.log()
        );
        Ok(server)
    }

    fn spawn(
        kiln: &Path,
        model: &str,
        base: &Path,
        extra: &[&str],
        env: &[(String, String)],
        grpc_port: u16,
        rest_port: u16,
    ) -> anyhow::Result<KilnServer> {
        let mut child = Command::new(kiln)
            .envs(env.iter().map(|(name, value)| (name, value)))
            .args(["serve", "--host", "127.0.0.1", "--model_name", model])
            .arg(format!("--port={grpc_port}"))
            .arg(format!("--rest_api_port={rest_port}"))
            .arg("--model_base_path")
            .arg(base)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting kiln serve")?;
        let log = Arc::new(Mutex::new(String::new()));
        let mut stderr = child.stderr.take().context("kiln serve has no stderr pipe")?;
        let sink = log.clone();
        std::thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            while let Ok(n @ 1..) = stderr.read(&mut buffer) {
                sink.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&String::from_utf8_lossy(&buffer[..n]));
            }
        });
        Ok(KilnServer { child, grpc_port, rest_port, log, scheme: "http", http: reqwest::Client::new() })
    }

    /// Polls `/readyz`; false if the process exited first.
    async fn wait_ready(&mut self) -> anyhow::Result<bool> {
        let started = Instant::now();
        let url = format!("{}/readyz", self.rest_url());
        let http = self.http.clone();
        while started.elapsed() < READY_WAIT {
            if !self.is_running()? {
                return Ok(false);
            }
            if let Ok(response) = http.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("kiln serve was not ready after {READY_WAIT:?}:\n{}", self.log())
    }

    /// `http://127.0.0.1:<REST port>` (`https` with TLS).
    pub fn rest_url(&self) -> String {
        format!("{}://{}", self.scheme, self.rest_addr())
    }

    /// `http://127.0.0.1:<gRPC port>` (`https` with TLS), as tonic wants it.
    pub fn grpc_url(&self) -> String {
        format!("{}://{}", self.scheme, self.grpc_addr())
    }

    /// `127.0.0.1:<REST port>`, for raw TCP clients.
    pub fn rest_addr(&self) -> String {
        format!("127.0.0.1:{}", self.rest_port)
    }

    /// `127.0.0.1:<gRPC port>`, for raw TCP clients.
    pub fn grpc_addr(&self) -> String {
        format!("127.0.0.1:{}", self.grpc_port)
    }

    /// Everything the server logged so far.
    pub fn log(&self) -> String {
        self.log.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// The server's process id, for reading its memory use from `/proc/<pid>/status`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (it has not crashed or exited on its own).
    pub fn is_running(&mut self) -> anyhow::Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// Sends SIGTERM (what Kubernetes sends) without waiting.
    pub fn sigterm(&self) -> anyhow::Result<()> {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        ensure!(status.success(), "kill -TERM {} failed", self.child.id());
        Ok(())
    }

    /// Waits for the process to exit, failing after `limit`.
    pub async fn wait_exit(&mut self, limit: Duration) -> anyhow::Result<ExitStatus> {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > limit {
                bail!("kiln serve still running {limit:?} after SIGTERM:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGTERM, then waits up to a minute for the server to drain and exit.
    pub async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        self.sigterm()?;
        self.wait_exit(Duration::from_secs(60)).await
    }
}

impl Drop for KilnServer {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Two loopback ports that were free a moment ago.
fn free_ports() -> anyhow::Result<(u16, u16)> {
    let a = std::net::TcpListener::bind("127.0.0.1:0")?;
    let b = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}
