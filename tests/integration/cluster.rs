//! Three real `quiver serve` processes as a cluster: the meta group elects a leader, a new
//! one takes over when the leader is SIGKILLed, the killed node comes back as a follower,
//! and nodes with a duplicate id or a foreign certificate are refused at start.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::process::{http_request, ServeProcess, BIN, EPHEMERAL};
use crate::support::DEADLINE;

/// A free UDP port on loopback, from the OS.
pub(crate) fn free_udp_port() -> u16 {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    socket.local_addr().expect("addr").port()
}

/// `quiver cluster init` for `n` nodes in `dir`, with peer ports from the OS.
pub(crate) fn init(dir: &Path, n: u64) -> Vec<PathBuf> {
    let out = Command::new(BIN)
        .args(["cluster", "init", "--nodes", &n.to_string(), "--dir"])
        .arg(dir)
        .output()
        .expect("cluster init runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ports: Vec<u16> = (0..n).map(|_| free_udp_port()).collect();
    let members: Vec<String> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
        .collect();
    (1..=n)
        .map(|id| {
            let path = dir.join(format!("node-{id}.toml"));
            let listen = format!("127.0.0.1:{}", ports[(id - 1) as usize]);
            rewrite_cluster(&path, &listen, &members);
            path
        })
        .collect()
}

/// Sets the `[cluster]` section's `listen` and `members` lines of the config at `path`, and
/// fast Raft timing (the test waits for elections).
fn rewrite_cluster(path: &Path, listen: &str, members: &[String]) {
    let text = std::fs::read_to_string(path).expect("node config");
    let quoted: Vec<String> = members.iter().map(|m| format!("{m:?}")).collect();
    let mut out = String::new();
    let mut in_cluster = false;
    for line in text.lines() {
        if line.starts_with('[') {
            in_cluster = line == "[cluster]";
        }
        let line = match in_cluster {
            true if line.starts_with("listen") => format!("listen = {listen:?}"),
            true if line.starts_with("members") => format!("members = [{}]", quoted.join(", ")),
            true if line.starts_with("heartbeat") || line.starts_with("election_timeout") => {
                continue
            }
            _ => line.to_string(),
        };
        out.push_str(&line);
        out.push('\n');
        if line == "[cluster]" {
            out.push_str("heartbeat = \"100ms\"\nelection_timeout = \"500ms\"\n");
        }
    }
    std::fs::write(path, out).expect("write config");
}

pub(crate) fn start(config: &Path) -> ServeProcess {
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .arg("--config")
        .arg(config)
        .args(EPHEMERAL);
    ServeProcess::spawn(command)
}

/// A node's `/cluster/status`, as JSON.
pub(crate) fn status(node: &ServeProcess) -> serde_json::Value {
    let (code, body) = http_request(node.http, "GET", "/cluster/status", "");
    assert_eq!(code, 200, "{body}");
    serde_json::from_str(&body).expect("status JSON")
}

/// Waits until every node in `nodes` names the same leader, one of them, and sees the three
/// members; returns the leader and its term.
pub(crate) fn agreed_leader(nodes: &[&ServeProcess], besides: Option<u64>) -> (u64, u64) {
    let began = Instant::now();
    loop {
        let seen: Vec<(Option<u64>, u64)> = nodes
            .iter()
            .map(|n| {
                let s = status(n);
                let members = s["members"].as_array().map_or(0, Vec::len);
                let leader = s["leader"].as_u64().filter(|_| members == 3);
                (leader, s["term"].as_u64().unwrap_or(0))
            })
            .collect();
        if let Some((Some(leader), term)) = seen.first().copied() {
            if Some(leader) != besides && seen.iter().all(|&(l, t)| l == Some(leader) && t == term)
            {
                return (leader, term);
            }
        }
        assert!(
            began.elapsed() < DEADLINE,
            "no agreed leader within {DEADLINE:?}: {seen:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `quiver serve` with `config` expecting it to refuse to start; returns its stderr.
fn refused(config: &Path, data_dir: &Path) -> String {
    let mut child = Command::new(BIN)
        .arg("serve")
        .arg("--config")
        .arg(config)
        .arg("--data-dir")
        .arg(data_dir)
        .args(EPHEMERAL)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("serve runs");
    let began = Instant::now();
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            assert!(!status.success(), "the node was expected to be refused");
            let mut err = String::new();
            use std::io::Read;
            child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err)
                .expect("read");
            return err;
        }
        if began.elapsed() > DEADLINE {
            let _ = child.kill();
            panic!("the node was not refused within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn the_meta_group_elects_again_when_its_leader_is_killed_and_takes_the_node_back() {
    let dir = tempfile::tempdir().unwrap();
    let configs = init(dir.path(), 3);
    let mut nodes: Vec<Option<ServeProcess>> = configs.iter().map(|c| Some(start(c))).collect();
    let all: Vec<&ServeProcess> = nodes.iter().flatten().collect();
    let (leader, term) = agreed_leader(&all, None);
    let first = status(all[0]);
    let out = Command::new(BIN)
        .args(["cluster", "status", "--http", &all[0].http.to_string()])
        .output()
        .expect("cluster status runs");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        shown.contains(&format!("meta leader {leader}, term {term}")),
        "{shown}"
    );
    assert_eq!(
        shown.lines().filter(|l| l.contains("127.0.0.1:")).count(),
        3,
        "{shown}"
    );
    assert_eq!(
        first["members"].as_array().map(Vec::len),
        Some(3),
        "{first}"
    );

    let killed_at = Instant::now();
    let index = (leader - 1) as usize;
    nodes[index].as_mut().expect("leader runs").kill();
    nodes[index] = None;
    let rest: Vec<&ServeProcess> = nodes.iter().flatten().collect();
    let (new_leader, new_term) = agreed_leader(&rest, Some(leader));
    eprintln!(
        "meta leader {leader} killed; node {new_leader} leads after {:?}",
        killed_at.elapsed()
    );
    assert!(new_term > term);

    // The killed node comes back with its data and follows the new leader.
    nodes[index] = Some(start(&configs[index]));
    let all: Vec<&ServeProcess> = nodes.iter().flatten().collect();
    let (again, _) = agreed_leader(&all, None);
    let back = status(nodes[index].as_ref().expect("restarted"));
    assert_eq!(back["state"], "follower", "{back}");
    assert_eq!(back["leader"].as_u64(), Some(again));

    // A second node with an id in use is refused at start, with the reason, and the
    // cluster does not notice.
    let members: Vec<String> = status(nodes[0].as_ref().expect("node 1"))["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| format!("{}@{}", m["id"], m["peer_addr"].as_str().expect("addr")))
        .collect();
    // It believes it is node 2, at an address of its own.
    let elsewhere = |id: u64| {
        let listen = format!("127.0.0.1:{}", free_udp_port());
        let mut list = members.clone();
        list[(id - 1) as usize] = format!("{id}@{listen}");
        (listen, list)
    };
    let impostor = dir.path().join("impostor.toml");
    std::fs::copy(&configs[1], &impostor).expect("copy");
    let (listen, list) = elsewhere(2);
    rewrite_cluster(&impostor, &listen, &list);
    let err = refused(&impostor, &dir.path().join("impostor"));
    assert!(err.contains("already in use"), "{err}");
    // A node whose certificate comes from another cluster's CA is refused too.
    let foreign = tempfile::tempdir().unwrap();
    let foreign_configs = init(foreign.path(), 3);
    let (listen, list) = elsewhere(3);
    rewrite_cluster(&foreign_configs[2], &listen, &list);
    let err = refused(&foreign_configs[2], &foreign.path().join("data"));
    assert!(err.contains("refused"), "{err}");
    let (after, _) = agreed_leader(&all, None);
    assert_eq!(after, again, "the refused nodes changed nothing");
    for node in &all {
        assert_eq!(status(node)["members"].as_array().map(Vec::len), Some(3));
    }
}
