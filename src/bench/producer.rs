//! One producer connection: `pipeline` lanes share its publish stream, each claiming the next
//! batch of the producer's quota, stamping it and waiting for the broker's confirm.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::task::JoinSet;
use tokio::time::Instant;

use super::{wall_ns, Shared, HEADER_LEN};
use crate::client::{ClientError, Producer};
use crate::message::{Headers, NewMessage, TopicName, MSG_ID_HEADER, ORDER_KEY_HEADER};

/// What one producer publishes.
#[derive(Debug, Clone)]
pub(super) struct Lane {
    pub index: usize,
    pub topic: TopicName,
    pub size: usize,
    pub batch: usize,
    /// Messages this producer publishes; `u64::MAX` to run until the deadline.
    pub quota: u64,
    /// When publishing began (for pacing).
    pub start: Instant,
    pub deadline: Option<Instant>,
    /// Seconds between this producer's batches, with `--rate`.
    pub batch_period: Option<f64>,
    /// Headers on every message.
    pub headers: Headers,
    /// With `--msg-ids`: this lane's random prefix; message `n` gets the id `<prefix>-<n>`.
    pub msg_ids: Option<String>,
    /// With `--keys N`: message `n` gets the order key `k<n mod N>`.
    pub keys: Option<u32>,
}

/// State shared by the lanes of one producer.
#[derive(Debug)]
struct Claims {
    /// Messages claimed so far (also the next message's sequence number).
    next: AtomicU64,
    /// Set when the publish stream is gone, so no lane keeps trying.
    dead: AtomicBool,
}

pub(super) async fn run(producer: Producer, lane: Lane, pipeline: usize, shared: Arc<Shared>) {
    let claims = Arc::new(Claims {
        next: AtomicU64::new(0),
        dead: AtomicBool::new(false),
    });
    let lane = Arc::new(lane);
    let mut lanes = JoinSet::new();
    for _ in 0..pipeline {
        lanes.spawn(publish_lane(
            producer.clone(),
            lane.clone(),
            claims.clone(),
            shared.clone(),
        ));
    }
    while lanes.join_next().await.is_some() {}
}

async fn publish_lane(
    producer: Producer,
    lane: Arc<Lane>,
    claims: Arc<Claims>,
    shared: Arc<Shared>,
) {
    // Filler after the header; each batch copies it after a fresh header.
    let filler: Vec<u8> = (0..lane.size - HEADER_LEN)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    let tag = (lane.index as u64) << 48;
    let batch = lane.batch as u64;
    loop {
        // Paced lanes check the deadline against each batch's due time instead.
        let unpaced_done = lane.batch_period.is_none() && past(lane.deadline);
        if claims.dead.load(Ordering::Relaxed) || unpaced_done {
            return;
        }
        let first = claims.next.fetch_add(batch, Ordering::Relaxed);
        if first >= lane.quota {
            return;
        }
        let n = batch.min(lane.quota - first) as usize;
        if let Some(period) = lane.batch_period {
            let due = lane.start + Duration::from_secs_f64(period * (first / batch) as f64);
            // Paced: a batch due before the deadline is still sent, however late it wakes.
            if lane.deadline.is_some_and(|deadline| due >= deadline) {
                return;
            }
            tokio::time::sleep_until(due).await;
        }

        // One allocation per batch: every body is a slice of it.
        let mut buf = BytesMut::with_capacity(n * lane.size);
        let sent_ns = wall_ns();
        for i in 0..n as u64 {
            buf.put_u64_le(sent_ns);
            buf.put_u64_le(tag | ((first + i) & ((1 << 48) - 1)));
            buf.put_slice(&filler);
        }
        let all = buf.freeze();
        let sent = Instant::now();
        let message = |body, i: usize| {
            let mut m = NewMessage {
                headers: lane.headers.clone(),
                body,
            };
            let n = first + i as u64;
            if let Some(prefix) = &lane.msg_ids {
                m.headers.push(MSG_ID_HEADER, format!("{prefix}-{n}"));
            }
            if let Some(keys) = lane.keys {
                m.headers
                    .push(ORDER_KEY_HEADER, format!("k{}", n % u64::from(keys)));
            }
            m
        };
        let result = if lane.batch == 1 {
            producer.publish(&lane.topic, message(all, 0)).await
        } else {
            let messages = (0..n)
                .map(|i| message(all.slice(i * lane.size..(i + 1) * lane.size), i))
                .collect();
            producer.publish_batch(&lane.topic, messages).await
        };
        match result {
            Ok(_) => {
                shared.published.fetch_add(n as u64, Ordering::Relaxed);
                let micros = sent.elapsed().as_micros() as u64;
                if let Ok(mut h) = shared.publish_latency.lock() {
                    h.saturating_record(micros.max(1));
                }
            }
            Err(e) => {
                shared.publish_errors.fetch_add(n as u64, Ordering::Relaxed);
                if matches!(e, ClientError::Closed) {
                    if !claims.dead.swap(true, Ordering::Relaxed) {
                        tracing::warn!(
                            producer = lane.index,
                            "publish stream closed; producer stops"
                        );
                    }
                    return;
                }
                tracing::debug!(producer = lane.index, error = %e, "publish failed");
            }
        }
    }
}

fn past(deadline: Option<Instant>) -> bool {
    deadline.is_some_and(|d| Instant::now() >= d)
}
