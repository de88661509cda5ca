//! The crash tests: a real `quiver serve` under publish and consume load (and, in one
//! variant, with both cores kept busy), killed with SIGKILL, restarted on the same
//! directory. Every publish confirmed under `fsync = always` must be delivered after the
//! restart, and a FIN'd message may come back only if the broker processed its FIN within
//! the stated bound ([`WRITE_WITHIN`]) before it last answered.
//!
//! When the broker processed a FIN is not visible to a client, so the test polls the
//! channel's `finished` count throughout: FINs on one stream are processed in order, so the
//! first poll answer whose count reaches k proves the k-th FIN was processed before that
//! answer arrived. The kill follows a poll answer at once, so "before the broker last
//! answered" is "within that poll's round trip before the kill" (printed).
//!
//! CI runs [`ROUNDS`] rounds of the plain test. For a longer soak:
//! `QUIVER_CRASH_ROUNDS=50 cargo test --release crash -- --nocapture`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use quiver::broker::ChannelStats;
use quiver::client::{Client, SubEvent, Subscription};
use quiver::message::NewMessage;
use quiver::storage::WRITE_WITHIN;

use crate::process::ServeProcess;
use crate::support::{body, channel, topic};

const ROUNDS: usize = 5;
const LOADED_ROUNDS: usize = 2;
const PUBLISHERS: usize = 4;
const BATCH: usize = 5;
const RDY: u32 = 500;
/// How long any one wait may take before the test fails with its counts.
const DEADLINE: Duration = Duration::from_secs(60);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_loses_no_confirmed_message() {
    let rounds = std::env::var("QUIVER_CRASH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    for round in 0..rounds {
        crash_round(round, 1000 + 500 * round as u64, false).await;
    }
}

/// The same with every core kept busy by spinning threads, as on a loaded CI machine: the
/// bound on redelivered FINs must still hold.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_on_a_busy_machine_redelivers_only_fins_within_the_bound() {
    for round in 0..LOADED_ROUNDS {
        crash_round(round, 2000 + 1000 * round as u64, true).await;
    }
}

/// What the clients saw before the kill.
#[derive(Default)]
struct Seen {
    confirmed: HashSet<String>,
    /// When each message was last received before the kill.
    delivered: HashMap<String, Instant>,
    /// The messages FIN'd, in the order the FINs were sent.
    finned: Vec<String>,
}

/// One answer to a stats poll.
struct Poll {
    sent: Instant,
    answered: Instant,
    finished: u64,
    lag_max_ms: u64,
}

/// `quiver serve --fsync always` on `dir`, a client, and a subscription to `crash`/`c` with
/// `rdy` credit.
async fn start(dir: &std::path::Path, rdy: u32) -> (ServeProcess, Client, Subscription) {
    let serve = ServeProcess::start(dir, &["--fsync", "always"]);
    let client = Client::connect(&serve.options()).await.unwrap();
    let sub = client
        .subscribe(&topic("crash"), &channel("c"), Default::default())
        .await
        .unwrap();
    sub.rdy(rdy).await.unwrap();
    (serve, client, sub)
}

async fn channel_stats(client: &Client) -> ChannelStats {
    let stats = client.stats(Some(&topic("crash"))).await.unwrap();
    stats.topics[0].channel("c").cloned().unwrap_or_default()
}

/// Publishes and consumes until the broker reports `target` FINs processed, then kills it
/// right after that answer; restarts it and checks what comes back.
async fn crash_round(round: usize, target: u64, busy: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (mut serve, client, sub) = start(dir.path(), RDY).await;
    let poller = Client::connect(&serve.options()).await.unwrap();
    let hogs = busy.then(CpuHogs::start);

    let seen = Arc::new(Mutex::new(Seen::default()));
    let tasks = load(&client, sub, &seen).await;
    let polls = poll_until_finished(&poller, target, round).await;
    let killed_at = Instant::now();
    serve.kill();
    for task in &tasks {
        task.abort();
    }
    let spins = hogs.map(CpuHogs::stop);
    drop((client, poller));
    let seen = std::mem::take(&mut *seen.lock().unwrap());

    let proven = proven_times(&seen.finned, &polls);
    let last = polls.last().expect("at least one poll");
    let (mut serve, client, sub) = start(dir.path(), 1000).await;
    let again = redelivered(&client, sub, &seen, round).await;
    let recovered = channel_stats(&client).await.recovered;

    // A FIN whose event was not written when the broker died was recorded less than
    // RECORD_WRITES_AFTER before the broker last read the channel's state, which it did to
    // answer the last poll: every access writes events that old.
    let bound = last.sent.checked_sub(WRITE_WITHIN).unwrap_or(last.sent);
    let finned_again: Vec<(&String, Instant)> = again
        .iter()
        .filter_map(|b| proven.get(b).map(|at| (b, *at)))
        .collect();
    let too_old: Vec<_> = finned_again
        .iter()
        .filter(|(_, at)| *at <= bound)
        .map(|(b, at)| (b, killed_at.duration_since(*at)))
        .collect();
    let delivered_again = again
        .iter()
        .filter(|b| seen.delivered.contains_key(*b))
        .count() as u64;
    // Deliveries whose cursor move may not have been written: received after the bound.
    let recent = seen.delivered.values().filter(|at| **at > bound).count() as u64;
    println!(
        "round {round}{}: {} confirmed, {} delivered, {} FINs sent and {} processed before \
         the kill; the last poll's round trip {:?}, kill {:?} after it, state lag at most {} ms; \
         {} delivered after the restart ({delivered_again} again, {recovered} recovered, \
         {} FIN'd before; {} of those FIN'd over {WRITE_WITHIN:?} before the kill){}",
        if busy { " (busy)" } else { "" },
        seen.confirmed.len(),
        seen.delivered.len(),
        seen.finned.len(),
        last.finished,
        last.answered.duration_since(last.sent),
        killed_at.duration_since(last.answered),
        last.lag_max_ms,
        again.len(),
        finned_again.len(),
        finned_again
            .iter()
            .filter(|(_, at)| killed_at.duration_since(*at) > WRITE_WITHIN)
            .count(),
        spins.map_or(String::new(), |s| format!(
            "; the busy threads spun {s} times"
        )),
    );
    assert!(
        !seen.confirmed.is_empty(),
        "round {round}: nothing was confirmed"
    );
    assert!(
        too_old.is_empty(),
        "round {round}: {} of {} redelivered FIN'd messages were FIN'd over {WRITE_WITHIN:?} \
         before the broker's last answer, e.g. (body, age at the kill) {:?}",
        too_old.len(),
        finned_again.len(),
        &too_old[..too_old.len().min(5)]
    );
    // Redeliveries are what the channel restored as pending, plus deliveries whose cursor
    // move was not yet written when the process died.
    assert!(
        delivered_again <= recovered + recent,
        "round {round}: {delivered_again} redelivered, {recovered} recovered, {recent} recent"
    );
    assert!(serve.terminate().success());
}

/// Starts the publishers and the consumer: it FINs 49 messages in 50 and leaves the 50th in
/// flight. Returns their tasks.
async fn load(
    client: &Client,
    mut sub: Subscription,
    seen: &Arc<Mutex<Seen>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let mut tasks = Vec::new();
    for p in 0..PUBLISHERS {
        let producer = client.producer().await.unwrap();
        let seen = seen.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0.. {
                let bodies: Vec<String> = (0..BATCH)
                    .map(|k| format!("p{p}-{}", i * BATCH + k))
                    .collect();
                let batch = bodies.iter().cloned().map(NewMessage::new).collect();
                if producer
                    .publish_batch(&topic("crash"), batch)
                    .await
                    .is_err()
                {
                    return;
                }
                seen.lock().unwrap().confirmed.extend(bodies);
            }
        }));
    }
    let acker = sub.acker();
    let seen = seen.clone();
    tasks.push(tokio::spawn(async move {
        let mut n = 0u64;
        while let Some(SubEvent::Message(d)) = sub.next_event().await {
            n += 1;
            let b = body(&d);
            seen.lock()
                .unwrap()
                .delivered
                .insert(b.clone(), Instant::now());
            if n.is_multiple_of(50) {
                continue;
            }
            // Recorded in the order sent, which is the order the broker processes them.
            if acker.fin(d.id).await.is_ok() {
                seen.lock().unwrap().finned.push(b);
            }
        }
    }));
    tasks
}

/// Polls the channel's stats until it reports `target` FINs processed; returns every answer.
async fn poll_until_finished(poller: &Client, target: u64, round: usize) -> Vec<Poll> {
    let began = Instant::now();
    let mut polls: Vec<Poll> = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(2));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let sent = Instant::now();
        let stats = tokio::time::timeout(DEADLINE, channel_stats(poller))
            .await
            .unwrap_or_else(|_| panic!("round {round}: no stats within {DEADLINE:?}"));
        let answered = Instant::now();
        polls.push(Poll {
            sent,
            answered,
            finished: stats.finished,
            lag_max_ms: stats.state_lag_max_ms,
        });
        if stats.finished >= target {
            return polls;
        }
        assert!(
            began.elapsed() < DEADLINE,
            "round {round}: only {} of {target} FINs processed after {DEADLINE:?}",
            stats.finished
        );
    }
}

/// For each FIN'd message whose FIN a poll proved processed: when that poll's answer
/// arrived (the broker processed it before then).
fn proven_times<'a>(finned: &'a [String], polls: &[Poll]) -> HashMap<&'a String, Instant> {
    let mut proven = HashMap::new();
    let mut next = 0;
    for poll in polls {
        let upto = (poll.finished as usize).min(finned.len());
        while next < upto {
            proven.insert(&finned[next], poll.answered);
            next += 1;
        }
    }
    proven
}

/// Receives and FINs everything the restarted broker delivers, until every confirmed
/// message that was not FIN'd came back and the channel reports nothing left (none ready,
/// in flight or deferred). Returns the bodies delivered.
async fn redelivered(
    client: &Client,
    mut sub: Subscription,
    seen: &Seen,
    round: usize,
) -> Vec<String> {
    let finned: HashSet<&String> = seen.finned.iter().collect();
    let mut missing: HashSet<&String> = seen
        .confirmed
        .iter()
        .filter(|b| !finned.contains(b))
        .collect();
    let began = Instant::now();
    let mut again = Vec::new();
    let mut check = tokio::time::interval(Duration::from_millis(50));
    loop {
        tokio::select! {
            event = sub.next_event() => {
                let Some(SubEvent::Message(d)) = event else {
                    panic!("round {round}: subscription ended: {event:?}");
                };
                sub.fin(d.id).await.unwrap();
                let b = body(&d);
                missing.remove(&b);
                again.push(b);
            }
            _ = check.tick() => {
                let c = channel_stats(client).await;
                if missing.is_empty() && c.depth == 0 && c.in_flight == 0 && c.deferred == 0 {
                    return again;
                }
                assert!(
                    began.elapsed() < DEADLINE,
                    "round {round}: after {DEADLINE:?}, {} confirmed messages never came back \
                     (e.g. {:?}); {} received; the channel has {} ready, {} in flight, {} \
                     deferred",
                    missing.len(),
                    missing.iter().take(5).collect::<Vec<_>>(),
                    again.len(),
                    c.depth,
                    c.in_flight,
                    c.deferred,
                );
            }
        }
    }
}

/// One spinning thread per core, until stopped (or dropped).
struct CpuHogs {
    stop: Arc<AtomicBool>,
    spins: Arc<AtomicU64>,
    threads: Vec<JoinHandle<()>>,
}

impl CpuHogs {
    fn start() -> CpuHogs {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        let stop = Arc::new(AtomicBool::new(false));
        let spins = Arc::new(AtomicU64::new(0));
        let threads = (0..cores)
            .map(|_| {
                let (stop, spins) = (stop.clone(), spins.clone());
                std::thread::spawn(move || {
                    let mut x = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        for i in 0..10_000u64 {
                            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
                        }
                        spins.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        CpuHogs {
            stop,
            spins,
            threads,
        }
    }

    /// Stops the threads and returns how many rounds of work they did.
    fn stop(mut self) -> u64 {
        self.halt();
        self.spins.load(Ordering::Relaxed)
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

impl Drop for CpuHogs {
    fn drop(&mut self) {
        self.halt();
    }
}
