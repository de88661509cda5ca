//! One consumer connection: FIN every message and record its publish→deliver latency.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hdrhistogram::Histogram;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{wall_ns, Shared, HEADER_LEN};
use crate::client::{SubEvent, Subscription};

/// Lowest and highest latency recorded, in microseconds (1 µs .. 60 s).
const LATENCY_BOUNDS_US: (u64, u64) = (1, 60_000_000);
/// How long a stopping consumer waits for the broker's CLOSE_OK.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a consumer saw.
#[derive(Debug)]
pub(super) struct Finished {
    pub latency: Histogram<u64>,
    /// When its last message arrived, before it was told to stop.
    pub last_message: Option<Instant>,
}

pub(super) fn new_histogram() -> Histogram<u64> {
    let (low, high) = LATENCY_BOUNDS_US;
    #[allow(clippy::expect_used)]
    Histogram::new_with_bounds(low, high, 3).expect("constant histogram bounds are valid")
}

/// The send timestamp a producer wrote at the start of `body`, if it has one.
fn sent_ns(body: &[u8]) -> Option<u64> {
    let header: [u8; 8] = body.get(..HEADER_LEN)?.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(header)).filter(|&ns| ns != 0)
}

pub(super) async fn run(
    index: usize,
    mut sub: Subscription,
    shared: Arc<Shared>,
    stop: CancellationToken,
) -> Finished {
    let acker = sub.acker();
    let mut latency = new_histogram();
    let mut last_message = None;
    let mut ended = false;
    loop {
        let event = tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            event = sub.next_event() => event,
        };
        match event {
            Some(SubEvent::Message(d)) => {
                let sent = sent_ns(&d.body);
                let now = wall_ns();
                // A FIN can only fail once the stream is gone, which the next event reports.
                let _ = acker.fin(d.id).await;
                if let Some(sent) = sent {
                    latency.saturating_record((now.saturating_sub(sent) / 1000).max(1));
                }
                last_message = Some(Instant::now());
                let total = shared.consumed.fetch_add(1, Ordering::AcqRel) + 1;
                if total >= shared.target.load(Ordering::Acquire) {
                    shared.wake.notify_one();
                }
            }
            Some(SubEvent::Error(e)) if e.fatal => {
                tracing::warn!(consumer = index, error = %e, "broker ended the subscription");
                ended = true;
                break;
            }
            Some(SubEvent::Error(e)) => {
                tracing::warn!(consumer = index, error = %e, "broker refused a command");
            }
            Some(SubEvent::Closed) | None => {
                tracing::warn!(consumer = index, "subscription stream closed");
                ended = true;
                break;
            }
        }
    }
    shared.live_consumers.fetch_sub(1, Ordering::AcqRel);
    shared.wake.notify_one();
    if !ended {
        close(&mut sub, &shared).await;
    }
    Finished {
        latency,
        last_message,
    }
}

/// CLS, then FIN whatever still arrives until the broker says the stream is done.
async fn close(sub: &mut Subscription, shared: &Shared) {
    if sub.cls().await.is_err() {
        return;
    }
    let drain = async {
        while let Some(event) = sub.next_event().await {
            match event {
                SubEvent::Message(d) => {
                    let _ = sub.fin(d.id).await;
                    shared.consumed.fetch_add(1, Ordering::AcqRel);
                }
                SubEvent::Closed => return,
                SubEvent::Error(e) if e.fatal => return,
                SubEvent::Error(_) => {}
            }
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, drain).await;
}
