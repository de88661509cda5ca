//! A task that owns a stream's send half and writes queued commands, coalescing whatever is
//! queued into one write.

use bytes::BytesMut;
use quinn::SendStream;
use tokio::sync::mpsc;

use crate::protocol::Command;

/// Commands queued per stream before senders wait.
pub(super) const QUEUE: usize = 4096;
const WRITE_AT: usize = 256 * 1024;

pub(super) fn spawn(mut send: SendStream, mut commands: mpsc::Receiver<Command>) {
    tokio::spawn(async move {
        let mut buf = BytesMut::with_capacity(WRITE_AT);
        while let Some(first) = commands.recv().await {
            first.encode(&mut buf);
            while buf.len() < WRITE_AT {
                match commands.try_recv() {
                    Ok(next) => next.encode(&mut buf),
                    Err(_) => break,
                }
            }
            if let Err(e) = send.write_all(&buf).await {
                tracing::debug!(error = %e, "stream write failed");
                return;
            }
            buf.clear();
        }
        // Every sender is gone: finish our side so the broker sees a clean end.
        let _ = send.finish();
    });
}
