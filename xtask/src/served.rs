//! A `kiln serve` child process on free loopback ports, for tasks that talk to a real server (`demo`,
//! `client-compat`) the way users do: through its sockets, stopped with SIGTERM.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};

/// How long the server may take to load and warm the model.
const READY_WAIT: Duration = Duration::from_secs(120);

/// A running `kiln serve`; killed on drop unless [`KilnServer::stop`] stopped it.
pub struct KilnServer {
    child: Child,
    /// The gRPC port.
    pub grpc_port: u16,
    /// The REST port.
    pub rest_port: u16,
}

impl KilnServer {
    /// Starts `kiln serve` for `model` at `base` on two free loopback ports and waits until `/readyz`
    /// answers 200. `kiln serve`, like TF Serving, reads port 0 as "disabled", so the ports are picked
    /// here; losing the race for one shows as an early exit and is retried.
    pub async fn start(kiln: &Path, model: &str, base: &Path) -> anyhow::Result<KilnServer> {
        for _attempt in 0..3 {
            let (grpc_port, rest_port) = free_ports()?;
            if let Some(server) = Self::try_start(kiln, model, base, grpc_port, rest_port).await? {
                return Ok(server);
            }
        }
        bail!("kiln serve exited before it was ready three times (see its log above)")
    }

    /// Starts `kiln serve` on the given ports (TF Serving's 8500/8501 for clients with fixed addresses).
    pub async fn start_on(
        kiln: &Path,
        model: &str,
        base: &Path,
        grpc_port: u16,
        rest_port: u16,
    ) -> anyhow::Result<KilnServer> {
        Self::try_start(kiln, model, base, grpc_port, rest_port).await?.with_context(|| {
            format!("kiln serve exited before it was ready on ports {grpc_port}/{rest_port}")
        })
    }

    async fn try_start(
        kiln: &Path,
        model: &str,
        base: &Path,
        grpc_port: u16,
        rest_port: u16,
    ) -> anyhow::Result<Option<KilnServer>> {
        let child = Command::new(kiln)
            .args(["serve", "--host", "127.0.0.1", "--model_name", model])
            .arg(format!("--port={grpc_port}"))
            .arg(format!("--rest_api_port={rest_port}"))
            .arg("--model_base_path")
            .arg(base)
            .stdin(Stdio::null())
            .spawn()
            .context("starting kiln serve")?;
        let mut server = KilnServer { child, grpc_port, rest_port };
        Ok(server.wait_ready().await?.then_some(server))
    }

    /// The server's process id, for reading its memory use from `/proc/<pid>/status`.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether the process is still running (it has not crashed or exited on its own).
    pub fn is_running(&mut self) -> anyhow::Result<bool> {
        Ok(self.child.try_wait()?.is_none())
    }

    /// `http://127.0.0.1:<rest port>`.
    pub fn rest_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.rest_port)
    }

    /// `http://127.0.0.1:<grpc port>`, as tonic wants it.
    pub fn grpc_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.grpc_port)
    }

    /// Polls `/readyz`; false if the process exited first.
    async fn wait_ready(&mut self) -> anyhow::Result<bool> {
        let started = Instant::now();
        let url = format!("{}/readyz", self.rest_url());
        let http = reqwest::Client::new();
        while started.elapsed() < READY_WAIT {
            if self.child.try_wait()?.is_some() {
                return Ok(false);
            }
            if let Ok(response) = http.get(&url).send().await
                && response.status().is_success()
            {
                return Ok(true);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("kiln serve was not ready after {READY_WAIT:?}")
    }

    /// Sends SIGTERM (what Kubernetes sends) and waits for the process to drain and exit.
    pub async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        ensure!(status.success(), "kill -TERM {} failed", self.child.id());
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > Duration::from_secs(60) {
                bail!("kiln serve still running a minute after SIGTERM");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
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
