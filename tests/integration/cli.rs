//! The `quiver` binary as a user runs it: serve, pub, sub, stats.

use std::path::Path;
use std::process::{Command, Stdio};

use crate::process::{ServeProcess, BIN, EPHEMERAL};

/// `quiver serve` run from `dir` with its default data directory, on ephemeral ports.
fn serve_in(dir: &Path) -> ServeProcess {
    let mut command = Command::new(BIN);
    command.arg("serve").args(EPHEMERAL).current_dir(dir);
    ServeProcess::spawn(command)
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
    let mut serve = serve_in(dir.path());
    assert!(
        dir.path().join("quiver-data/tls/cert.pem").exists(),
        "dev certificate made"
    );
    let addr = serve.quic.to_string();
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
            "--nsq-tcp",
            "off",
            "--nsq-http",
            "off",
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("broker.msg_timeout"), "{err}");
}

#[test]
fn serve_binds_and_prints_the_nsq_listeners() {
    let dir = tempfile::tempdir().unwrap();
    let serve = ServeProcess::start(&dir.path().join("data"), &[]);
    for addr in [serve.nsq_tcp, serve.nsq_http] {
        let addr = addr.expect("both NSQ listeners are on by default and printed");
        assert!(addr.ip().is_loopback(), "{addr}");
        std::net::TcpStream::connect(addr).expect("the NSQ listener accepts TCP connections");
    }
}
