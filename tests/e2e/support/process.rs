//! The real `backchannel` binary as a child process, for crash and signal tests.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};

use super::{Http, SECRET, STEP};

pub const BIN: &str = env!("CARGO_BIN_EXE_backchannel");

pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    pub http: Http,
    pub data_dir: PathBuf,
    /// Everything the process wrote to stdout and stderr, for failure messages.
    output: Arc<Mutex<String>>,
}

fn pump(stream: impl AsyncRead + Unpin + Send + 'static, output: Arc<Mutex<String>>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            let mut out = output.lock().unwrap();
            out.push_str(&line);
            out.push('\n');
        }
    });
}

impl ServerProcess {
    /// `backchannel serve --listen 127.0.0.1:0 --data-dir DIR --jwt-secret SECRET`, and
    /// waits for its `listening on http://...` line.
    pub async fn spawn(data_dir: &Path) -> Self {
        Self::spawn_with(data_dir, &[]).await
    }

    pub async fn spawn_with(data_dir: &Path, extra_args: &[&str]) -> Self {
        let mut child = Command::new(BIN)
            .arg("serve")
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--jwt-secret")
            .arg(SECRET)
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn backchannel");
        let output = Arc::new(Mutex::new(String::new()));
        pump(child.stderr.take().unwrap(), output.clone());
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(STEP, async {
            while let Ok(Some(line)) = lines.next_line().await {
                {
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("");
                    return addr.trim_end_matches('/').parse::<SocketAddr>().ok();
                }
            }
            None
        })
        .await;
        let addr = match addr {
            Ok(Some(addr)) => addr,
            other => {
                let _ = child.start_kill();
                panic!(
                    "no `listening on http://ADDR` line from the server ({other:?}); output:\n{}",
                    output.lock().unwrap()
                );
            }
        };
        // Keep draining stdout so the child never blocks on a full pipe.
        let rest = output.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let mut out = rest.lock().unwrap();
                out.push_str(&line);
                out.push('\n');
            }
        });
        ServerProcess {
            child,
            addr,
            http: Http::new(addr),
            data_dir: data_dir.to_path_buf(),
            output,
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id().expect("process still running") as i32
    }

    pub fn output(&self) -> String {
        self.output.lock().unwrap().clone()
    }

    /// kill -9, and wait for the process to be gone.
    pub async fn kill9(&mut self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGKILL,
        )
        .expect("SIGKILL");
        self.wait(STEP).await;
    }

    pub fn sigterm(&self) {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .expect("SIGTERM");
    }

    /// Waits for the process to exit; panics after `timeout`.
    pub async fn wait(&mut self, timeout: Duration) -> ExitStatus {
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(status) => status.expect("wait for child"),
            Err(_) => {
                let _ = self.child.start_kill();
                panic!(
                    "server process did not exit within {timeout:?}; output:\n{}",
                    self.output()
                )
            }
        }
    }

    pub async fn connect(&self) -> super::Client {
        super::connect(self.addr, Default::default())
            .await
            .unwrap_or_else(|e| panic!("WebSocket upgrade failed: {e:?}"))
    }

    pub async fn client(&self, token: &str) -> super::Client {
        let mut client = self.connect().await;
        client.hello(token).await;
        client
    }
}

/// Runs `backchannel ARGS...` to completion; returns (status, stdout, stderr).
pub async fn run_cli(args: &[&str]) -> (ExitStatus, String, String) {
    let output = tokio::time::timeout(
        STEP,
        Command::new(BIN)
            .args(args)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("backchannel CLI did not finish in time")
    .expect("run backchannel CLI");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}
