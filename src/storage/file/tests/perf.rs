//! Throughput of the append path, for a quick check in release:
//! `cargo test --release --lib storage::file::tests::perf -- --ignored --nocapture`

use std::time::{Duration, Instant};

use super::*;

fn hundred_bytes() -> StoredMessage {
    msg(&"m".repeat(100))
}

fn rate(n: u64, elapsed: Duration) -> u64 {
    (n as f64 / elapsed.as_secs_f64()) as u64
}

#[test]
#[ignore = "benchmark: run in release with --nocapture"]
fn append_throughput() {
    for (policy, batch) in [
        (FsyncPolicy::default(), 1),
        (FsyncPolicy::default(), 64),
        (FsyncPolicy::Never, 1),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path(), with_fsync(StorageConfig::default(), policy));
        let log = storage.open_topic(&topic("t")).unwrap();
        let total = 1_000_000u64;
        let began = Instant::now();
        for _ in 0..total / batch {
            log.append(vec![hundred_bytes(); batch as usize]).unwrap();
        }
        let elapsed = began.elapsed();
        println!(
            "{policy}, batches of {batch}: {} appends/s ({} msgs/s), {:?}",
            rate(total / batch, elapsed),
            rate(total, elapsed),
            log.stats()
        );
        let began = Instant::now();
        let mut out = Vec::new();
        let mut from = 0;
        while from < total {
            out.clear();
            log.read(from, 1024, &mut out);
            from = out.last().unwrap().0 + 1;
        }
        println!("  read back: {} msgs/s", rate(total, began.elapsed()));
    }

    for in_flight in [1, 8, 32] {
        always_throughput(in_flight);
    }
}

/// 16 publishers on 2 runtime threads, each with `in_flight` publishes awaiting `durable`.
fn always_throughput(in_flight: usize) {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(
        dir.path(),
        with_fsync(StorageConfig::default(), FsyncPolicy::Always),
    );
    let log = storage.open_topic(&topic("t")).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let publishers = 16u64;
    let each = 2_000 * in_flight.min(5) as u64;
    let began = Instant::now();
    rt.block_on(async {
        let mut tasks = Vec::new();
        for _ in 0..publishers {
            let log = log.clone();
            tasks.push(tokio::spawn(async move {
                let mut waiting = std::collections::VecDeque::new();
                for _ in 0..each {
                    let range = log.append(vec![hundred_bytes()]).unwrap();
                    waiting.push_back(log.durable(range.end));
                    if waiting.len() >= in_flight {
                        waiting.pop_front().unwrap().await.unwrap();
                    }
                }
                for durable in waiting {
                    durable.await.unwrap();
                }
            }));
        }
        for task in tasks {
            task.await.unwrap();
        }
    });
    println!(
        "always, {publishers} publishers x {in_flight} in flight: {} msgs/s, {:?}",
        rate(publishers * each, began.elapsed()),
        log.stats()
    );
}
