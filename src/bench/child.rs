//! A broker started for the bench: `quiver serve` as a child process on loopback, with a
//! temporary data directory that is removed afterwards.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::BenchError;

/// How long the broker may take to print its addresses.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// After the QUIC line, how long to wait for the `cert` line before assuming the default path.
const CERT_LINE_GRACE: Duration = Duration::from_secs(1);
/// How long the broker may take to stop after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// Bytes of the broker's stderr kept for error messages.
const STDERR_TAIL: usize = 8 * 1024;

/// Formats the broker's stderr for an error message (nothing if it is empty).
pub(super) fn stderr_section(stderr: &str) -> String {
    let stderr = stderr.trim_end();
    if stderr.is_empty() {
        String::new()
    } else {
        format!("\n--- broker stderr ---\n{stderr}")
    }
}

/// Removes a directory when dropped.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn create() -> Result<TempDir, BenchError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let path =
            std::env::temp_dir().join(format!("quiver-bench-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).map_err(|source| BenchError::TempDir {
            path: path.clone(),
            source,
        })?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.0) {
            tracing::debug!(path = %self.0.display(), error = %e, "removing the bench data dir");
        }
    }
}

/// A running child broker. Killed if dropped without [`ChildBroker::stop`].
#[derive(Debug)]
pub(super) struct ChildBroker {
    // Declared before `data_dir` so the process is killed before its directory is removed.
    child: Child,
    pid: Option<u32>,
    addr: SocketAddr,
    /// The NSQ TCP listener's address, if it printed one.
    nsq: Option<SocketAddr>,
    cert: PathBuf,
    _data_dir: TempDir,
}

impl ChildBroker {
    /// Starts `exe serve` and waits until it prints its QUIC address and certificate path.
    pub(super) async fn start(exe: &Path, extra: &[String]) -> Result<ChildBroker, BenchError> {
        let data_dir = TempDir::create()?;
        let mut child = Command::new(exe)
            .arg("serve")
            .arg("--data-dir")
            .arg(&data_dir.0)
            .args([
                "--quic",
                "127.0.0.1:0",
                "--http",
                "127.0.0.1:0",
                "--nsq-tcp",
                "127.0.0.1:0",
                "--nsq-http",
                "127.0.0.1:0",
            ])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|source| BenchError::Spawn {
                exe: exe.to_owned(),
                source,
            })?;
        let pid = child.id();
        let stderr_tail = Arc::new(Mutex::new(Vec::new()));
        let stderr_done = child
            .stderr
            .take()
            .map(|stderr| tokio::spawn(keep_tail(stderr, stderr_tail.clone())));
        let Some(stdout) = child.stdout.take() else {
            return Err(startup_error(
                "its stdout is not available".into(),
                &stderr_tail,
            ));
        };
        let mut lines = BufReader::new(stdout).lines();

        let deadline = Instant::now() + STARTUP_TIMEOUT;
        let (mut addr, mut cert, mut nsq) = (None, None, None);
        let mut why = None;
        while addr.is_none() || cert.is_none() {
            let until = match addr {
                Some((_, seen_at)) => deadline.min(seen_at + CERT_LINE_GRACE),
                None => deadline,
            };
            match tokio::time::timeout_at(until, lines.next_line()).await {
                Ok(Ok(Some(line))) => {
                    let mut words = line.split_whitespace();
                    let first = words.next().unwrap_or("").trim_end_matches(':');
                    if addr.is_none() && first == "QUIC" {
                        addr = words
                            .find_map(|w| {
                                w.trim_matches(|c| c == ',' || c == '(' || c == ')')
                                    .parse()
                                    .ok()
                            })
                            .map(|a: SocketAddr| (a, Instant::now()));
                    } else if nsq.is_none() && first == "NSQ" && words.next() == Some("TCP") {
                        nsq = words.next().and_then(|w| w.parse().ok());
                    } else if cert.is_none() && first == "cert" {
                        let rest = line.trim_start();
                        let path =
                            rest[rest.find(char::is_whitespace).unwrap_or(rest.len())..].trim();
                        if !path.is_empty() {
                            cert = Some(PathBuf::from(path));
                        }
                    }
                }
                Ok(Ok(None)) => {
                    why = Some("it exited, or closed its stdout, before printing its QUIC address");
                    break;
                }
                Ok(Err(_)) => {
                    why = Some("reading its stdout failed");
                    break;
                }
                Err(_) => break,
            }
        }
        let Some((addr, _)) = addr else {
            let why = why.unwrap_or("it printed no `QUIC <address>` line in time");
            let status = match child.try_wait() {
                Ok(Some(status)) => format!(" ({status})"),
                _ => String::new(),
            };
            // Let the stderr reader catch up with a process that has just exited.
            if let Some(done) = stderr_done {
                let _ = tokio::time::timeout(Duration::from_millis(500), done).await;
            }
            return Err(startup_error(format!("{why}{status}"), &stderr_tail));
        };
        let cert = match cert {
            Some(cert) => cert,
            None => {
                let default = data_dir.0.join("tls").join("cert.pem");
                if !default.exists() {
                    return Err(startup_error(
                        format!(
                            "it printed no `cert <path>` line and {} does not exist",
                            default.display()
                        ),
                        &stderr_tail,
                    ));
                }
                default
            }
        };
        // Keep draining stdout so the broker never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        tracing::debug!(%addr, cert = %cert.display(), ?pid, "bench broker started");
        Ok(ChildBroker {
            child,
            pid,
            addr,
            nsq,
            cert,
            _data_dir: data_dir,
        })
    }

    pub(super) fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub(super) fn nsq_addr(&self) -> Option<SocketAddr> {
        self.nsq
    }

    pub(super) fn cert_path(&self) -> &Path {
        &self.cert
    }

    /// The broker's peak resident set size so far (`VmHWM`), where /proc has it.
    pub(super) fn peak_rss_bytes(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let mut fields = line["VmHWM:".len()..].split_whitespace();
        let value: u64 = fields.next()?.parse().ok()?;
        let scale = match fields.next() {
            Some("kB") | None => 1024,
            Some("mB") => 1024 * 1024,
            Some(_) => return None,
        };
        Some(value * scale)
    }

    /// SIGTERM (graceful shutdown), then SIGKILL if it is still running after a while.
    pub(super) async fn stop(mut self) {
        if let Some(pid) = self.pid {
            let term = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            if matches!(term, Ok(status) if status.success())
                && tokio::time::timeout(STOP_TIMEOUT, self.child.wait())
                    .await
                    .is_ok()
            {
                return;
            }
            tracing::debug!(pid, "bench broker did not stop on SIGTERM; killing it");
        }
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

fn startup_error(why: String, stderr_tail: &Mutex<Vec<u8>>) -> BenchError {
    let tail = stderr_tail.lock().unwrap_or_else(|e| e.into_inner());
    BenchError::BrokerStartup {
        why,
        stderr: String::from_utf8_lossy(&tail).into_owned(),
    }
}

/// Reads `stream` to the end, keeping its last [`STDERR_TAIL`] bytes.
async fn keep_tail(mut stream: impl AsyncRead + Unpin, tail: Arc<Mutex<Vec<u8>>>) {
    let mut chunk = vec![0u8; 4096];
    loop {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut tail = tail.lock().unwrap_or_else(|e| e.into_inner());
                tail.extend_from_slice(&chunk[..n]);
                if tail.len() > STDERR_TAIL {
                    let excess = tail.len() - STDERR_TAIL;
                    tail.drain(..excess);
                }
            }
        }
    }
}
