//! `quiver sub` as a real process on a cluster of three real `quiver serve` processes: when
//! the topic's leader is SIGKILLed it finds the new leader (through `--seed`, since the node
//! at `--addr` is the dead one) and goes on printing what is published after the kill.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use quiver::message::NewMessage;

use crate::cluster_failover::{first_publish, three_nodes};
use crate::process::BIN;
use crate::support::{topic, DEADLINE};

/// The lines a child writes to one of its pipes, collected by a thread.
type Lines = Arc<Mutex<Vec<String>>>;

fn collect(pipe: impl std::io::Read + Send + 'static) -> Lines {
    let lines: Lines = Arc::default();
    let kept = lines.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(pipe).lines().map_while(Result::ok) {
            if std::env::var_os("QUIVER_TEST_LOG").is_some() {
                eprintln!("sub: {line}");
            }
            kept.lock().unwrap().push(line);
        }
    });
    lines
}

/// Waits until every one of `want` was printed.
async fn printed(out: &Lines, err: &Lines, want: &[String]) {
    let began = Instant::now();
    loop {
        let missing: Vec<&String> = {
            let out = out.lock().unwrap();
            want.iter().filter(|w| !out.contains(w)).collect()
        };
        if missing.is_empty() {
            return;
        }
        assert!(
            began.elapsed() < DEADLINE,
            "sub did not print {} messages, e.g. {:?}; its stderr: {:?}",
            missing.len(),
            missing.first(),
            err.lock().unwrap()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills the child when the test ends, however it ends.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiver_sub_goes_on_at_the_new_leader_after_a_sigkill_of_the_old_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (mut nodes, ca, seeds) = three_nodes(dir.path());
    let t = topic("tailed");
    let (producer, leader) = first_publish(&ca, &seeds, &t).await;
    let mut command = Command::new(BIN);
    command
        .args(["sub", "tailed", "c", "--ca"])
        .arg(&ca)
        .args(["--addr", &seeds[leader].to_string()]);
    for (_, seed) in seeds.iter().enumerate().filter(|(i, _)| *i != leader) {
        command.args(["--seed", &seed.to_string()]);
    }
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("quiver sub starts");
    let out = collect(child.stdout.take().expect("stdout"));
    let err = collect(child.stderr.take().expect("stderr"));
    let _child = Killed(child);

    let before: Vec<String> = (0..10).map(|i| format!("before-{i}")).collect();
    for text in &before {
        producer
            .publish(&t, NewMessage::new(text.clone()).with_msg_id(text.clone()))
            .await
            .expect("confirmed");
    }
    printed(&out, &err, &before).await;

    nodes[leader].process.as_mut().expect("live").kill();
    nodes[leader].process = None;
    let killed_at = Instant::now();
    let after: Vec<String> = (0..20).map(|i| format!("after-{i}")).collect();
    for text in &after {
        producer
            .publish(&t, NewMessage::new(text.clone()).with_msg_id(text.clone()))
            .await
            .expect("confirmed by the new leader");
    }
    printed(&out, &err, &after).await;
    println!(
        "sub printed every message published after the kill {:?} after it",
        killed_at.elapsed()
    );
    let err = err.lock().unwrap();
    println!("its stderr: {err:?}");
    assert!(
        err.iter().any(|l| l.starts_with("subscribed again at")),
        "sub did not say it subscribed again: {err:?}"
    );
}
