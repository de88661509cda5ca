//! Catching a replica up from a snapshot.
//!
//! A topic group's snapshot is a [`Descriptor`]: how far the sender's local log reaches,
//! its channels' states and the topic's metadata, but not the messages. A replica that
//! lacks messages the snapshot covers (it was down while the leader purged the Raft log, or
//! its data directory was lost) fetches them from the snapshot's sender in chunks
//! ([`TopicRpc::Fetch`](super::network::TopicRpc::Fetch)) before the snapshot is installed,
//! so that installing it only has to take the channel states and metadata.
//!
//! Everything fetched is below the sender's applied end, hence committed: the same offsets
//! hold the same messages on every replica, and appending them is what applying their
//! entries would have done. If the sender has trimmed past this replica's end, the replica
//! drops what it holds (every channel had finished it) and continues its log at the
//! sender's start.

use std::future::Future;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::machine::Descriptor;
use crate::storage::file::{from_frames, to_frame};
use crate::storage::journal::events_to_bytes;
use crate::storage::{ChannelRecord, StateEvent, TopicLog};

/// The most message bytes one fetch answer carries.
pub const FETCH_BYTES: usize = 4 << 20;

/// Events per journal frame when a channel's state is written into a snapshot.
const EVENTS_PER_FRAME: usize = 1024;

/// A chunk of the sender's log.
#[derive(Debug, Serialize, Deserialize)]
pub struct FetchReply {
    /// The sender's log start: a request below it gets nothing.
    pub start: u64,
    /// The offset of the first message in `frames`.
    pub first: u64,
    /// Consecutive messages as replication frames.
    pub frames: Vec<u8>,
}

/// Reads the messages `from..to` of `log`, up to about `max_bytes`, stopping before any
/// offset it cannot read, so that what it returns is consecutive.
pub fn serve_fetch(log: &dyn TopicLog, from: u64, to: u64, max_bytes: usize) -> FetchReply {
    let start = log.start();
    let first = from.max(start);
    let mut frames = Vec::new();
    let mut next = first;
    let mut read = Vec::new();
    'chunks: while next < to && frames.len() < max_bytes {
        read.clear();
        log.read(next, ((to - next) as usize).min(256), &mut read);
        if read.is_empty() {
            break;
        }
        for (offset, message) in &read {
            if *offset != next || *offset >= to {
                break 'chunks;
            }
            let Some(frame) = to_frame(message) else {
                break 'chunks;
            };
            frames.extend_from_slice(&frame);
            next += 1;
            if frames.len() >= max_bytes {
                break 'chunks;
            }
        }
    }
    FetchReply {
        start,
        first,
        frames,
    }
}

/// Brings `log` up to `descriptor.end`, fetching the missing messages with `fetch(from,
/// to)`. Returns how many messages it appended.
pub async fn fill<F, Fut>(
    log: &Arc<dyn TopicLog>,
    descriptor: &Descriptor,
    fetch: F,
) -> Result<u64, String>
where
    F: Fn(u64, u64) -> Fut,
    Fut: Future<Output = Result<FetchReply, String>>,
{
    let mut appended = 0;
    while log.end() < descriptor.end {
        let end = log.end();
        let reply = fetch(end, descriptor.end).await?;
        if end < reply.start {
            // Everything this replica holds was trimmed on the sender: finished by every
            // channel. Continue at the sender's start.
            log.trim(end);
            log.restart_at(reply.start).map_err(|e| e.to_string())?;
            continue;
        }
        if reply.first != end {
            return Err(format!(
                "asked for messages from {end}, the sender answered from {}",
                reply.first
            ));
        }
        let messages = from_frames(&reply.frames)
            .ok_or_else(|| "a damaged chunk from the sender".to_string())?;
        if messages.is_empty() {
            return Err(format!(
                "the sender cannot read offset {end}, which its snapshot covers"
            ));
        }
        let count = messages.len() as u64;
        log.append(messages).map_err(|e| e.to_string())?;
        appended += count;
    }
    log.durable(log.end()).await.map_err(|e| e.to_string())?;
    Ok(appended)
}

/// A channel's state as journal frames: its options, everything below its cursor settled,
/// then its pending offsets.
pub fn record_to_bytes(record: &ChannelRecord) -> Vec<u8> {
    let mut events = vec![
        StateEvent::Options(record.options),
        StateEvent::Empty(record.cursor),
    ];
    events.extend(
        record
            .pending
            .iter()
            .map(|(&offset, &entry)| StateEvent::Pending { offset, entry }),
    );
    events
        .chunks(EVENTS_PER_FRAME)
        .flat_map(events_to_bytes)
        .collect()
}

/// The state [`record_to_bytes`] wrote.
pub fn record_from_bytes(bytes: &[u8]) -> Result<ChannelRecord, &'static str> {
    let mut record = ChannelRecord::default();
    for event in crate::storage::journal::events_from_bytes(bytes)? {
        record.apply(&event);
    }
    Ok(record)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::message::OrderBy;
    use crate::message::{StoredMessage, TopicName};
    use crate::storage::{ChannelOptions, MemoryStorage, PendingEntry, Storage};

    fn message(i: u64) -> StoredMessage {
        StoredMessage {
            timestamp_ns: i,
            deliver_at_ms: 0,
            headers: Default::default(),
            body: format!("m{i}").into(),
            route: None,
        }
    }

    #[test]
    fn a_channel_record_survives_the_round_trip() {
        let pending: BTreeMap<u64, PendingEntry> = (0..3000)
            .map(|i| {
                (
                    i * 3,
                    PendingEntry {
                        attempts: (i % 7) as u16 + 1,
                        due_ms: i * 11,
                    },
                )
            })
            .collect();
        let record = ChannelRecord {
            cursor: 9500,
            options: ChannelOptions {
                paused: true,
                max_attempts: 4,
                msg_timeout_ms: 1500,
                ordering: OrderBy::Channel,
            },
            pending,
        };
        assert_eq!(record_from_bytes(&record_to_bytes(&record)), Ok(record));
        let empty = ChannelRecord::default();
        assert_eq!(record_from_bytes(&record_to_bytes(&empty)), Ok(empty));
    }

    #[test]
    fn fetches_are_consecutive_bounded_and_start_at_the_log_start() {
        let storage = MemoryStorage;
        let log = storage.open_topic(&TopicName::new("t").unwrap()).unwrap();
        log.append((0..100).map(message).collect()).unwrap();
        log.trim(10);
        let reply = serve_fetch(&*log, 0, 100, 1 << 20);
        assert_eq!((reply.start, reply.first), (10, 10));
        assert_eq!(from_frames(&reply.frames).unwrap().len(), 90);
        let reply = serve_fetch(&*log, 20, 30, 1 << 20);
        let got = from_frames(&reply.frames).unwrap();
        assert_eq!(got.len(), 10);
        assert_eq!(got[0].body, message(20).body);
        // A byte bound stops early, after whole messages.
        let small = serve_fetch(&*log, 20, 100, 1);
        assert_eq!(from_frames(&small.frames).unwrap().len(), 1);
    }
}
