//! `quiver bench --nsq`: the same load through the broker's NSQ TCP listener, with a minimal
//! NSQ client of its own. Producers pipeline MPUBs (each answered `OK` once durable);
//! consumers SUB, set RDY and FIN every message, all FINs of one read in one write.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::consumer::{new_histogram, Finished};
use super::{wall_ns, BenchArgs, BenchError, Outcome, Plan, Shared, HEADER_LEN};

const FRAME_RESPONSE: i32 = 0;
const FRAME_ERROR: i32 = 1;
const FRAME_MESSAGE: i32 = 2;
const READ_CHUNK: usize = 256 * 1024;

pub(super) async fn load(
    args: &BenchArgs,
    plan: &Plan,
    addr: SocketAddr,
) -> Result<Outcome, BenchError> {
    let shared = Arc::new(Shared {
        published: AtomicU64::new(0),
        publish_errors: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        target: AtomicU64::new(u64::MAX),
        live_consumers: AtomicUsize::new(0),
        publish_latency: std::sync::Mutex::new(new_histogram()),
        wake: Notify::new(),
    });
    let connect = |role, index| async move {
        let mut stream = TcpStream::connect(addr)
            .await
            .map_err(|e| BenchError::Nsq {
                role,
                index,
                source: e,
            })?;
        let _ = stream.set_nodelay(true);
        stream
            .write_all(b"  V2")
            .await
            .map_err(|e| BenchError::Nsq {
                role,
                index,
                source: e,
            })?;
        Ok::<TcpStream, BenchError>(stream)
    };

    let stop = CancellationToken::new();
    let mut consumers = JoinSet::new();
    for index in 0..args.consumers {
        let mut stream = connect("consumer", index).await?;
        let sub = format!("SUB {} {}\nRDY {}\n", plan.topic, plan.channel, args.rdy);
        stream
            .write_all(sub.as_bytes())
            .await
            .map_err(|e| BenchError::Nsq {
                role: "consumer",
                index,
                source: e,
            })?;
        shared.live_consumers.fetch_add(1, Ordering::Relaxed);
        consumers.spawn(consume(index, stream, shared.clone(), stop.clone()));
    }
    // Let the subscriptions exist before the first publish.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let mut streams = Vec::with_capacity(args.producers);
    for index in 0..args.producers {
        streams.push(connect("producer", index).await?);
    }
    let start = Instant::now();
    let deadline = args.duration.map(|d| start + d);
    let mut publishing = JoinSet::new();
    for (index, stream) in streams.into_iter().enumerate() {
        let quota = plan.count.map_or(u64::MAX, |count| {
            let producers = args.producers as u64;
            count / producers + u64::from((index as u64) < count % producers)
        });
        let lane = Lane {
            index,
            topic: plan.topic.to_string(),
            size: args.size,
            batch: args.batch,
            quota,
            start,
            deadline,
            batch_period: plan.batch_period,
            pipeline: args.pipeline,
        };
        publishing.spawn(produce(stream, lane, shared.clone()));
    }
    while let Some(done) = publishing.join_next().await {
        done?;
    }
    let publish_end = Instant::now();

    let published = shared.published.load(Ordering::Acquire);
    if args.consumers > 0 {
        shared.drain(published, publish_end).await;
    }
    stop.cancel();
    let (latency, consume_end) = super::gather(&mut consumers).await?;
    Ok(Outcome::of(
        args,
        &shared,
        published,
        start,
        publish_end,
        consume_end,
        latency,
    ))
}

/// What one producer publishes.
#[derive(Debug)]
struct Lane {
    index: usize,
    topic: String,
    size: usize,
    batch: usize,
    quota: u64,
    start: Instant,
    deadline: Option<Instant>,
    /// Seconds between this producer's batches, with `--rate`.
    batch_period: Option<f64>,
    pipeline: usize,
}

impl Lane {
    /// When the batch starting at message `sent` is due, with `--rate`.
    fn due(&self, sent: u64) -> Option<Instant> {
        let period = self.batch_period?;
        let batches = sent / self.batch as u64;
        Some(self.start + Duration::from_secs_f64(period * batches as f64))
    }
}

/// One producer connection: up to `pipeline` MPUBs in flight, answered in order.
async fn produce(mut stream: TcpStream, lane: Lane, shared: Arc<Shared>) {
    let filler: Vec<u8> = (0..lane.size - HEADER_LEN)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let tag = (lane.index as u64) << 48;
    let mut sent = 0u64;
    // (sent at, messages) per MPUB not yet answered.
    let mut waiting: VecDeque<(Instant, u64)> = VecDeque::new();
    let mut out = BytesMut::new();
    let mut input = BytesMut::with_capacity(64 * 1024);
    loop {
        let now = Instant::now();
        let past_deadline = lane.deadline.is_some_and(|d| now >= d);
        let mut due = None;
        while waiting.len() < lane.pipeline && sent < lane.quota && !past_deadline {
            if let Some(at) = lane.due(sent).filter(|&at| at > Instant::now()) {
                // Paced: a batch due before the deadline is still sent.
                if lane.deadline.is_none_or(|d| at < d) {
                    due = Some(at);
                }
                break;
            }
            let n = (lane.batch as u64).min(lane.quota - sent);
            let now_ns = wall_ns();
            let body_len = 4 + n as usize * (4 + lane.size);
            out.put_slice(format!("MPUB {}\n", lane.topic).as_bytes());
            out.put_u32(body_len as u32);
            out.put_u32(n as u32);
            for i in 0..n {
                out.put_u32(lane.size as u32);
                out.put_u64_le(now_ns);
                out.put_u64_le(tag | ((sent + i) & ((1 << 48) - 1)));
                out.put_slice(&filler);
            }
            waiting.push_back((Instant::now(), n));
            sent += n;
        }
        if !out.is_empty() {
            if let Err(e) = stream.write_all(&out).await {
                return lost(&lane, &shared, &waiting, e);
            }
            out.clear();
        }
        if waiting.is_empty() {
            match due {
                Some(at) => {
                    tokio::time::sleep_until(at).await;
                    continue;
                }
                None => return,
            }
        }
        let read = tokio::select! {
            read = stream.read_buf(&mut input) => read,
            _ = sleep_until(due) => continue,
        };
        match read {
            Ok(0) => {
                return lost(
                    &lane,
                    &shared,
                    &waiting,
                    io::ErrorKind::UnexpectedEof.into(),
                )
            }
            Ok(_) => {}
            Err(e) => return lost(&lane, &shared, &waiting, e),
        }
        while let Some((kind, data)) = next_frame(&mut input) {
            if kind == FRAME_RESPONSE && &data[..] == b"_heartbeat_" {
                out.put_slice(b"NOP\n");
                continue;
            }
            let Some((at, n)) = waiting.pop_front() else {
                continue;
            };
            if kind == FRAME_RESPONSE {
                shared.published.fetch_add(n, Ordering::Relaxed);
                if let Ok(mut h) = shared.publish_latency.lock() {
                    h.saturating_record((at.elapsed().as_micros() as u64).max(1));
                }
            } else {
                shared.publish_errors.fetch_add(n, Ordering::Relaxed);
                tracing::warn!(producer = lane.index, error = %String::from_utf8_lossy(&data), "MPUB failed");
            }
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn lost(lane: &Lane, shared: &Shared, waiting: &VecDeque<(Instant, u64)>, e: io::Error) {
    let n: u64 = waiting.iter().map(|(_, n)| n).sum();
    shared.publish_errors.fetch_add(n, Ordering::Relaxed);
    tracing::warn!(producer = lane.index, error = %e, "NSQ producer connection lost");
}

/// One consumer connection: FIN every message; all FINs of one read go in one write.
async fn consume(
    index: usize,
    mut stream: TcpStream,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Finished {
    let mut latency = new_histogram();
    let mut last_message = None;
    let mut input = BytesMut::with_capacity(READ_CHUNK);
    let mut out = BytesMut::new();
    loop {
        input.reserve(READ_CHUNK);
        let read = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            read = stream.read_buf(&mut input) => read,
        };
        match read {
            Ok(0) | Err(_) => {
                tracing::warn!(consumer = index, "NSQ consumer connection closed");
                break;
            }
            Ok(_) => {}
        }
        let now = wall_ns();
        let mut messages = 0;
        while let Some((kind, data)) = next_frame(&mut input) {
            match kind {
                FRAME_MESSAGE if data.len() >= 26 => {
                    out.put_slice(b"FIN ");
                    out.put_slice(&data[10..26]);
                    out.put_u8(b'\n');
                    if let Some(sent) = data.get(26..34) {
                        let mut ns = [0u8; 8];
                        ns.copy_from_slice(sent);
                        let sent = u64::from_le_bytes(ns);
                        latency.saturating_record((now.saturating_sub(sent) / 1000).max(1));
                    }
                    messages += 1;
                }
                FRAME_RESPONSE if &data[..] == b"_heartbeat_" => out.put_slice(b"NOP\n"),
                FRAME_ERROR => {
                    tracing::warn!(consumer = index, error = %String::from_utf8_lossy(&data), "NSQ error")
                }
                _ => {}
            }
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                break;
            }
            out.clear();
        }
        if messages > 0 {
            last_message = Some(Instant::now());
            let total = shared.consumed.fetch_add(messages, Ordering::AcqRel) + messages;
            if total >= shared.target.load(Ordering::Acquire) {
                shared.wake.notify_one();
            }
        }
    }
    shared.live_consumers.fetch_sub(1, Ordering::AcqRel);
    shared.wake.notify_one();
    Finished {
        latency,
        last_message,
    }
}

/// Splits the next whole frame off `input`: (type, data).
fn next_frame(input: &mut BytesMut) -> Option<(i32, BytesMut)> {
    let size = i32::from_be_bytes(input.get(..4)?.try_into().ok()?) as usize;
    if size < 4 || input.len() < 4 + size {
        return None;
    }
    input.advance(4);
    let kind = input.get_i32();
    Some((kind, input.split_to(size - 4)))
}
