//! The `quiver` binary as a user runs it: serve, pub, sub, stats.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_quiver");

/// `quiver serve` in `dir` on ephemeral ports, killed with SIGTERM on drop.
struct Serve {
    child: Child,
    quic: String,
}

impl Serve {
    fn start(dir: &Path) -> Serve {
        let mut child = Command::new(BIN)
            .args(["serve", "--quic", "127.0.0.1:0", "--http", "127.0.0.1:0"])
            .current_dir(dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("quiver serve starts");
        let stdout = child.stdout.take().unwrap();
        let mut quic = None;
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let mut words = line.split_whitespace();
            if words.next() == Some("QUIC") {
                quic = words.next().map(str::to_string);
            }
            if line.trim_start().starts_with("sha256") {
                break;
            }
        }
        Serve {
            child,
            quic: quic.expect("serve prints its QUIC address"),
        }
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        for _ in 0..100 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("quiver serve did not exit after SIGTERM");
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn quiver(dir: &Path, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("quiver runs")
}

#[test]
fn quick_start_pub_then_sub_prints_the_message() {
    let dir = tempfile::tempdir().unwrap();
    let mut serve = Serve::start(dir.path());
    assert!(
        dir.path().join("quiver-data/tls/cert.pem").exists(),
        "dev certificate made"
    );
    let addr = serve.quic.clone();
    let out = quiver(dir.path(), &["pub", "t", "hello", "--addr", &addr]);
    assert!(
        out.status.success(),
        "pub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = quiver(
        dir.path(),
        &["sub", "t", "c", "--count", "1", "--addr", &addr],
    );
    assert!(
        out.status.success(),
        "sub: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello\n");

    let out = Command::new(BIN)
        .args(["pub", "t", "-H", "kind=line", "--addr", &addr])
        .current_dir(dir.path())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child
                .stdin
                .take()
                .unwrap()
                .write_all(b"one\ntwo\nthree\n")?;
            child.wait_with_output()
        })
        .unwrap();
    assert!(out.status.success());
    let out = quiver(
        dir.path(),
        &["sub", "t", "c", "-n", "3", "--json", "--addr", &addr],
    );
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let bodies: Vec<&str> = lines.iter().map(|l| l["body"].as_str().unwrap()).collect();
    assert_eq!(bodies, ["one", "two", "three"]);
    assert_eq!(lines[0]["headers"]["kind"], "line");
    assert_eq!(lines[0]["attempts"], 1);

    let out = quiver(dir.path(), &["stats", "--json", "--addr", &addr]);
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let channel = &stats["topics"][0]["channels"][0];
    assert_eq!(
        (channel["finished"].as_u64(), channel["depth"].as_u64()),
        (Some(4), Some(0))
    );
    let out = quiver(dir.path(), &["stats", "--addr", &addr]);
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("TOPIC"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.split_whitespace().next() == Some("c")),
        "{table}"
    );

    assert!(serve.terminate().success(), "SIGTERM is a clean shutdown");
}

#[test]
fn client_without_a_way_to_trust_the_broker_says_how_to_fix_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = quiver(dir.path(), &["pub", "t", "x", "--addr", "127.0.0.1:9"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--fingerprint"), "{err}");
}

#[test]
fn bad_config_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("q.toml"),
        "[broker]\nmsg_timeout = \"10ms\"\n",
    )
    .unwrap();
    let out = quiver(
        dir.path(),
        &[
            "serve",
            "--config",
            "q.toml",
            "--quic",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broker.msg_timeout"), "{err}");
}
