use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::*;
use crate::broker::hooks::{Decision, Gate, Hooks, MessageRef, Router, Routing};
use crate::broker::{Broker, BrokerConfig, Principal};
use crate::message::{ChannelName, Headers, NewMessage, StoredMessage, TopicName};
use crate::storage::{FileStorage, Storage, StorageConfig};

const SEC: u64 = 1_000_000_000;

fn message(id: Option<&str>, timestamp_ns: u64) -> StoredMessage {
    let mut headers = Headers::new();
    if let Some(id) = id {
        headers.push(MSG_ID_HEADER, id);
    }
    StoredMessage {
        timestamp_ns,
        deliver_at_ms: 0,
        headers,
        body: "b".into(),
        route: None,
    }
}

fn key(window: &DedupWindow, id: &str) -> Key {
    window.key_of(&message(Some(id), 0)).unwrap()
}

#[test]
fn an_id_is_a_duplicate_within_the_window_and_new_after_it() {
    let mut w = DedupWindow::new(Duration::from_secs(10), 100);
    let a = key(&w, "a");
    w.insert(a, 7, 100 * SEC);
    assert_eq!(w.original(a, 105 * SEC), Some(7));
    assert_eq!(w.original(key(&w, "b"), 105 * SEC), None);
    // Past the window it is not a duplicate, even before the sweep forgets it.
    assert_eq!(w.original(a, 111 * SEC), None);
    w.expire(111 * SEC);
    assert_eq!(w.stats().ids, 0);
    assert_eq!(w.stats().duplicates, 1);
}

#[test]
fn an_expired_id_stored_again_is_kept_by_the_sweep() {
    let mut w = DedupWindow::new(Duration::from_secs(10), 100);
    let a = key(&w, "a");
    w.insert(a, 1, 100 * SEC);
    w.insert(a, 2, 120 * SEC);
    // The stale entry of the first store goes; the id stays with its new offset.
    w.expire(125 * SEC);
    assert_eq!(w.original(a, 125 * SEC), Some(2));
    assert_eq!(w.stats().ids, 1);
    assert_eq!(w.floor(), Some(2));
}

#[test]
fn at_the_cap_the_oldest_ids_are_forgotten_and_counted() {
    let mut w = DedupWindow::new(Duration::from_secs(60), 3);
    for (i, id) in ["a", "b", "c", "d", "e"].iter().enumerate() {
        w.insert(key(&w, id), i as u64, 100 * SEC);
    }
    let stats = w.stats();
    assert_eq!((stats.ids, stats.evicted), (3, 2));
    assert_eq!(w.original(key(&w, "a"), 101 * SEC), None);
    assert_eq!(w.original(key(&w, "b"), 101 * SEC), None);
    assert_eq!(w.original(key(&w, "e"), 101 * SEC), Some(4));
    assert_eq!(w.floor(), Some(2));
}

#[test]
fn a_batch_drops_window_duplicates_and_repeats_within_itself() {
    let mut w = DedupWindow::new(Duration::from_secs(60), 100);
    w.insert(key(&w, "old"), 41, 100 * SEC);
    let batch = Batch::new(vec![
        message(Some("new"), 101 * SEC),
        message(Some("old"), 101 * SEC),
        message(None, 101 * SEC),
        message(Some("new"), 101 * SEC),
        message(Some("other"), 101 * SEC),
    ]);
    let mut marks = Screen::new(5);
    let kept = screen(&mut w, batch, &mut marks, 101 * SEC);
    assert_eq!(marks.duplicates, [false, true, false, true, false]);
    assert_eq!(marks.original, Some(41));
    assert_eq!(kept.indexes, [0, 2, 4]);
    assert!(kept.keys[1].is_none());
    record(&mut w, &kept.keys, 50, 101 * SEC);
    assert_eq!(w.original(key(&w, "new"), 102 * SEC), Some(50));
    assert_eq!(w.original(key(&w, "other"), 102 * SEC), Some(52));
}

#[test]
fn a_window_of_zero_keeps_everything() {
    let mut w = DedupWindow::new(Duration::ZERO, 100);
    let batch = Batch::new(vec![message(Some("a"), SEC), message(Some("a"), SEC)]);
    let mut marks = Screen::new(2);
    let kept = screen(&mut w, batch, &mut marks, SEC);
    assert_eq!(kept.messages.len(), 2);
    assert!(marks.duplicates.is_empty());
    record(&mut w, &kept.keys, 0, SEC);
    assert_eq!(w.stats().ids, 0);
}

#[test]
fn the_window_is_rebuilt_from_the_tail_of_a_reopened_log() {
    let dir = tempfile::tempdir().unwrap();
    let topic = TopicName::new("t").unwrap();
    let now = crate::broker::wall_clock().as_nanos() as u64;
    {
        let storage = FileStorage::open(dir.path(), StorageConfig::default()).unwrap();
        let log = storage.open_topic(&topic).unwrap();
        // Old ids, then 5000 recent ones (more than one read step), one repeated.
        let old: Vec<_> = (0..10)
            .map(|i| message(Some(&format!("old{i}")), now - 600 * SEC))
            .collect();
        log.append(old).unwrap();
        let recent: Vec<_> = (0..5000)
            .map(|i| message(Some(&format!("id{i}")), now - SEC))
            .chain([message(None, now), message(Some("id3"), now)])
            .collect();
        log.append(recent).unwrap();
    }
    let storage = FileStorage::open(dir.path(), StorageConfig::default()).unwrap();
    let log = storage.open_topic(&topic).unwrap();
    let mut w = DedupWindow::new(Duration::from_secs(120), 1_000_000);
    assert_eq!(w.rebuild(&*log, now), 5000);
    assert_eq!(w.original(key(&w, "id0"), now), Some(10));
    assert_eq!(w.original(key(&w, "id4999"), now), Some(5009));
    // The latest store of a repeated id wins.
    assert_eq!(w.original(key(&w, "id3"), now), Some(5011));
    assert_eq!(w.original(key(&w, "old0"), now), None);
    assert_eq!(w.floor(), Some(10));
    // With a cap, the newest ids are read back.
    let mut capped = DedupWindow::new(Duration::from_secs(120), 100);
    assert_eq!(capped.rebuild(&*log, now), 100);
    assert_eq!(capped.original(key(&capped, "id4999"), now), Some(5009));
    assert_eq!(capped.original(key(&capped, "id0"), now), None);
}

/// Keeps every message, and records the bodies it was shown.
#[derive(Debug, Default)]
struct Recorder {
    seen: Mutex<Vec<String>>,
}

impl Router for Recorder {
    fn route(&self, message: &MessageRef<'_>, _may_wait: bool) -> Decision<Routing> {
        let body = String::from_utf8_lossy(message.body).into_owned();
        self.seen.lock().unwrap().push(body);
        Decision::Made(Routing::All)
    }
}

#[derive(Debug)]
struct RouteAll(Arc<Recorder>);

impl Hooks for RouteAll {
    fn router(&self, _topic: &TopicName) -> Option<Arc<dyn Router>> {
        Some(self.0.clone())
    }

    fn gate(&self, _topic: &TopicName, _channel: &ChannelName) -> Option<Arc<dyn Gate>> {
        None
    }

    fn dead_letter_topic(&self, _topic: &TopicName, _channel: &ChannelName) -> Option<TopicName> {
        None
    }
}

#[tokio::test]
async fn a_routed_topic_drops_duplicates_before_its_router_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(FileStorage::open(dir.path(), StorageConfig::default()).unwrap());
    let broker = Broker::new(BrokerConfig::default(), storage);
    let recorder = Arc::new(Recorder::default());
    assert!(broker.set_hooks(Arc::new(RouteAll(recorder.clone()))));
    let t = TopicName::new("routed").unwrap();
    let who = Principal::internal();
    let m = |id: &str, body: &str| NewMessage::new(body.to_owned()).with_msg_id(id);
    let first = broker
        .append(&who, &t, vec![m("a", "1"), m("b", "2")], Duration::ZERO)
        .await
        .unwrap();
    assert!(first.duplicates().is_empty());
    assert_eq!(first.confirmed().await.unwrap(), 0..2);
    let (range, marks) = broker
        .publish_marked(
            &who,
            &t,
            vec![m("b", "3"), m("c", "4"), m("c", "5")],
            Duration::ZERO,
        )
        .await
        .unwrap();
    assert_eq!(range, 2..3);
    assert_eq!(marks, [true, false, true]);
    assert_eq!(*recorder.seen.lock().unwrap(), ["1", "2", "4"]);
    let stats = broker.stats(&who, Some(&t)).unwrap();
    assert_eq!(stats.topics[0].message_count, 3);
    assert_eq!(stats.topics[0].duplicates, 2);
    assert_eq!(stats.topics[0].dedup_ids, 3);
}

#[tokio::test]
async fn a_bad_id_refuses_the_whole_publish() {
    let storage = Arc::new(crate::storage::MemoryStorage);
    let broker = Broker::new(BrokerConfig::default(), storage);
    let t = TopicName::new("t").unwrap();
    let who = Principal::internal();
    for bad in [String::new(), "x".repeat(129)] {
        let messages = vec![
            NewMessage::new("ok").with_msg_id("fine"),
            NewMessage::new("bad").with_msg_id(bad),
        ];
        let e = broker
            .publish(&who, &t, messages, Duration::ZERO)
            .await
            .unwrap_err();
        assert_eq!(e.kind(), crate::broker::ErrorKind::Invalid);
    }
    assert!(broker.stats(&who, Some(&t)).is_err(), "nothing was stored");
}
