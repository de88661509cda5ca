//! `quiver serve` as a real child process: started on ephemeral loopback ports, and stopped
//! with SIGTERM or killed with SIGKILL.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quiver::client::ClientOptions;
use quiver::transport::tls::{parse_fingerprint, Trust};

pub const BIN: &str = env!("CARGO_BIN_EXE_quiver");

/// `quiver serve` flags putting every listener on an ephemeral loopback port.
pub const EPHEMERAL: [&str; 8] = [
    "--quic",
    "127.0.0.1:0",
    "--http",
    "127.0.0.1:0",
    "--nsq-tcp",
    "127.0.0.1:0",
    "--nsq-http",
    "127.0.0.1:0",
];

pub struct ServeProcess {
    child: Child,
    pub quic: SocketAddr,
    /// The HTTP admin API's address.
    pub http: SocketAddr,
    /// The NSQ TCP listener's address.
    pub nsq_tcp: Option<SocketAddr>,
    /// The nsqd HTTP API's address.
    pub nsq_http: Option<SocketAddr>,
    fingerprint: [u8; 32],
    /// Its stderr lines so far, when started with [`ServeProcess::spawn_logged`].
    log: Option<Arc<Mutex<Vec<String>>>>,
}

impl ServeProcess {
    /// `quiver serve --data-dir <data_dir>` on ephemeral ports, plus `extra` flags.
    pub fn start(data_dir: &Path, extra: &[&str]) -> ServeProcess {
        let mut command = Command::new(BIN);
        command.arg("serve").arg("--data-dir").arg(data_dir);
        command.args(EPHEMERAL);
        command.args(extra);
        Self::spawn(command)
    }

    /// Runs `command`, which must end up running `quiver serve` with ephemeral ports, and
    /// reads the addresses and fingerprint it prints. Set `QUIVER_TEST_LOG=1` to see its logs.
    pub fn spawn(command: Command) -> ServeProcess {
        Self::spawn_with(command, false)
    }

    /// [`spawn`](Self::spawn), keeping its stderr lines for [`log`](Self::log) (and printing
    /// them too with `QUIVER_TEST_LOG=1`).
    pub fn spawn_logged(command: Command) -> ServeProcess {
        Self::spawn_with(command, true)
    }

    /// The stderr lines written so far (only with [`spawn_logged`](Self::spawn_logged)).
    pub fn log(&self) -> Vec<String> {
        let log = self.log.as_ref().expect("started with spawn_logged");
        log.lock().unwrap().clone()
    }

    fn spawn_with(mut command: Command, keep_log: bool) -> ServeProcess {
        let show = std::env::var_os("QUIVER_TEST_LOG").is_some();
        let stderr = match (keep_log, show) {
            (true, _) => Stdio::piped(),
            (false, true) => Stdio::inherit(),
            (false, false) => Stdio::null(),
        };
        let mut child = command
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("quiver serve starts");
        let log = keep_log.then(|| {
            let log = Arc::new(Mutex::new(Vec::new()));
            let lines = BufReader::new(child.stderr.take().expect("stderr piped")).lines();
            let kept = Arc::clone(&log);
            std::thread::spawn(move || {
                for line in lines.map_while(Result::ok) {
                    if show {
                        eprintln!("{line}");
                    }
                    kept.lock().unwrap().push(line);
                }
            });
            log
        });
        let stdout = child.stdout.take().expect("stdout piped");
        let mut lines = BufReader::new(stdout).lines();
        let (mut quic, mut http, mut fingerprint) = (None, None, None);
        let (mut nsq_tcp, mut nsq_http) = (None, None);
        for line in lines.by_ref() {
            let line = line.expect("stdout readable");
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("QUIC"), Some(addr)) => quic = addr.parse().ok(),
                (Some("HTTP"), Some(url)) => {
                    http = url.trim_start_matches("http://").parse().ok();
                }
                (Some("NSQ"), Some("TCP")) => nsq_tcp = words.next().and_then(|a| a.parse().ok()),
                (Some("NSQ"), Some("HTTP")) => {
                    nsq_http = words
                        .next()
                        .and_then(|url| url.trim_start_matches("http://").parse().ok());
                }
                (Some("sha256"), Some(fp)) => {
                    fingerprint = parse_fingerprint(fp).ok();
                    break;
                }
                _ => {}
            }
        }
        // Keep draining stdout so that the broker never blocks on it.
        std::thread::spawn(move || lines.for_each(drop));
        let (Some(quic), Some(http), Some(fingerprint)) = (quic, http, fingerprint) else {
            let status = child.wait().expect("wait");
            panic!("quiver serve did not start ({status}); run with QUIVER_TEST_LOG=1");
        };
        ServeProcess {
            child,
            quic,
            http,
            nsq_tcp,
            nsq_http,
            fingerprint,
            log,
        }
    }

    /// Sends `signal` (e.g. `HUP`) to the process.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success(), "kill -{signal} failed");
    }

    pub fn options(&self) -> ClientOptions {
        ClientOptions::new(self.quic, Trust::Fingerprint(self.fingerprint))
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill(&mut self) {
        self.child.kill().expect("SIGKILL");
        self.child.wait().expect("wait");
    }

    /// SIGTERM, then waits for a graceful exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        for _ in 0..1200 {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("quiver serve did not exit within a minute of SIGTERM");
    }
}

/// Replaces `path` by writing aside and renaming, as deploy tools do.
pub fn write_atomically(path: &Path, contents: impl AsRef<[u8]>) {
    let aside = path.with_extension("tmp");
    std::fs::write(&aside, contents).expect("write aside");
    std::fs::rename(&aside, path).expect("rename into place");
}

/// One HTTP/1.1 request to `addr` with `body`; returns the status and the response body.
pub fn http_request(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).expect("HTTP connects");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("HTTP request written");
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .expect("HTTP response read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    (status, body)
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
