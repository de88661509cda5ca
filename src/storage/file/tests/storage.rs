//! Appends, reads, reopening, topics, metadata and channel stores.

use super::*;
use crate::message::ChannelName;
use crate::storage::TopicMeta;

#[test]
fn messages_round_trip_with_headers_deliver_at_and_empty_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path(), config(1 << 20));
    let log = storage.open_topic(&topic("t")).unwrap();
    let mut headers = Headers::new();
    headers.push("trace", "abc");
    headers.push("trace", "é");
    headers.push("empty", "");
    let messages = vec![
        StoredMessage {
            timestamp_ns: 11,
            deliver_at_ms: 1_700_000_000_000,
            headers,
            body: Bytes::from_static(b"hello"),
            route: None,
        },
        StoredMessage {
            timestamp_ns: 12,
            deliver_at_ms: 0,
            headers: Headers::new(),
            body: Bytes::new(),
            route: None,
        },
    ];
    assert_eq!(log.append(messages.clone()).unwrap(), 0..2);
    assert_eq!(log.append(vec![]).unwrap(), 2..2);
    assert_eq!(log.append(vec![msg("x")]).unwrap(), 2..3);
    assert_eq!(*log.get(0).unwrap(), messages[0]);
    assert_eq!(*log.get(1).unwrap(), messages[1]);
    assert!(log.get(3).is_none());
    storage.close().unwrap();

    // After a reopen everything comes from disk.
    let storage = open(dir.path(), config(1 << 20));
    let log = storage.open_topic(&topic("t")).unwrap();
    let all = read_all(&*log);
    assert_eq!(offsets(&all), [0, 1, 2]);
    assert_eq!(*all[0].1, messages[0]);
    assert_eq!(*all[1].1, messages[1]);
    assert_eq!(*log.get(0).unwrap(), messages[0]);
    assert_eq!((log.start(), log.end()), (0, 3));
}

#[test]
fn reads_span_segments_from_cache_and_disk() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(4096);
    config.cache_bytes = 2000;
    let storage = open(dir.path(), config);
    let log = storage.open_topic(&topic("t")).unwrap();
    for i in 0..300 {
        log.append(vec![numbered(i)]).unwrap();
    }
    assert!(log.stats().segments >= 10, "{:?}", log.stats());
    let all = read_all(&*log);
    assert_eq!(offsets(&all), (0..300).collect::<Vec<_>>());
    for (offset, message) in &all {
        assert_eq!(*message.body, *numbered(*offset).body);
    }
    // Bounded reads from any offset, crossing segments.
    for from in [0, 1, 29, 30, 31, 150, 290] {
        let mut out = Vec::new();
        log.read(from, 45, &mut out);
        let want: Vec<u64> = (from..300).take(45).collect();
        assert_eq!(offsets(&out), want, "from {from}");
    }
    assert_eq!(*log.get(123).unwrap().body, *numbered(123).body);
    let files = segment_files(dir.path(), "t");
    assert_eq!(files.len() as u64, log.stats().segments);
    let on_disk: u64 = files.iter().map(|f| f.metadata().unwrap().len()).sum();
    assert_eq!(log.stats().bytes, on_disk);
}

#[test]
fn a_batch_larger_than_a_segment_goes_whole_into_one() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path(), config(4096));
    let log = storage.open_topic(&topic("t")).unwrap();
    log.append(vec![msg("small")]).unwrap();
    let big = msg(&"b".repeat(10_000));
    assert_eq!(log.append(vec![big.clone(), big.clone()]).unwrap(), 1..3);
    log.append(vec![msg("after")]).unwrap();
    assert_eq!(segment_files(dir.path(), "t").len(), 3);
    drop(storage);
    let storage = open(dir.path(), config(4096));
    let log = storage.open_topic(&topic("t")).unwrap();
    let all = read_all(&*log);
    assert_eq!(offsets(&all), [0, 1, 2, 3]);
    assert_eq!(*all[2].1, big);
}

#[test]
fn clean_reopen_scans_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path(), config(4096));
    let log = storage.open_topic(&topic("t")).unwrap();
    for i in 0..100 {
        log.append(vec![numbered(i)]).unwrap();
    }
    storage.close().unwrap();
    storage.close().unwrap();
    assert!(log.append(vec![msg("late")]).is_err());
    assert!(topic_dir(dir.path(), "t").join("clean").exists());
    drop(storage);

    let storage = open(dir.path(), config(4096));
    let log = file_log(&storage, "t");
    assert_eq!(log.scanned_at_open(), 0);
    assert!(!topic_dir(dir.path(), "t").join("clean").exists());
    assert_eq!(offsets(&read_all(&*log)), (0..100).collect::<Vec<_>>());
    assert_eq!(log.append(vec![msg("next")]).unwrap(), 100..101);
    drop(storage);

    // Without close, the next open scans the active segment and finds everything.
    let storage = open(dir.path(), config(4096));
    let log = file_log(&storage, "t");
    assert!(log.scanned_at_open() > 0);
    assert!(log.scanned_at_open() < 101, "sealed segments are trusted");
    assert_eq!(offsets(&read_all(&*log)), (0..101).collect::<Vec<_>>());
}

#[test]
fn unclean_reopen_rebuilds_missing_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path(), config(4096));
    let log = storage.open_topic(&topic("t")).unwrap();
    for i in 0..100 {
        log.append(vec![numbered(i)]).unwrap();
    }
    drop(storage);
    for entry in std::fs::read_dir(topic_dir(dir.path(), "t")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "idx") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let storage = open(dir.path(), config(4096));
    let log = file_log(&storage, "t");
    assert_eq!(log.scanned_at_open(), 100);
    assert_eq!(offsets(&read_all(&*log)), (0..100).collect::<Vec<_>>());
    drop(storage);
    let storage = open(dir.path(), config(4096));
    let log = file_log(&storage, "t");
    assert!(log.scanned_at_open() < 100, "indexes were rebuilt");
}

#[test]
fn a_failed_append_leaves_nothing_and_the_next_one_retries() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path(), config(1 << 20));
    let log = file_log(&storage, "t");
    log.append(vec![msg("a")]).unwrap();
    let len = segment_files(dir.path(), "t")[0].metadata().unwrap().len();
    log.fail_next_write
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let e = log.append(vec![numbered(1), numbered(2)]).unwrap_err();
    assert!(e.is_disk_full(), "{e}");
    assert_eq!(log.end(), 1);
    assert_eq!(
        segment_files(dir.path(), "t")[0].metadata().unwrap().len(),
        len
    );
    assert_eq!(offsets(&read_all(&*log)), [0]);
    assert_eq!(log.append(vec![msg("b")]).unwrap(), 1..2);
    drop(storage);
    let storage = open(dir.path(), config(1 << 20));
    let log = storage.open_topic(&topic("t")).unwrap();
    let all = read_all(&*log);
    assert_eq!(offsets(&all), [0, 1]);
    assert_eq!(*all[1].1.body, *b"b");
}

#[test]
fn topics_are_listed_deleted_and_ephemeral_ones_stay_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path(), config(4096));
    let b = storage.open_topic(&topic("b")).unwrap();
    let a = storage.open_topic(&topic("a")).unwrap();
    assert!(Arc::ptr_eq(&a, &storage.open_topic(&topic("a")).unwrap()));
    let e = storage.open_topic(&topic("e#ephemeral")).unwrap();
    e.append(vec![msg("x")]).unwrap();
    assert!(!topic_dir(dir.path(), "e#ephemeral").exists());
    a.append(vec![msg("x")]).unwrap();
    b.append(vec![msg("y")]).unwrap();
    assert!(
        FileStorage::open(dir.path(), config(4096)).is_err(),
        "locked"
    );
    drop(storage);

    let storage = open(dir.path(), config(4096));
    assert_eq!(storage.existing_topics(), [topic("a"), topic("b")]);
    let old = storage.open_topic(&topic("a")).unwrap();
    storage.delete_topic(&topic("a")).unwrap();
    assert!(!topic_dir(dir.path(), "a").exists());
    assert_eq!(storage.existing_topics(), [topic("b")]);
    assert!(old.append(vec![msg("z")]).is_err());
    assert!(!topic_dir(dir.path(), "a").exists(), "nothing recreated");
    // A new topic of the same name starts empty.
    let fresh = storage.open_topic(&topic("a")).unwrap();
    assert_eq!((fresh.start(), fresh.end()), (0, 0));
    storage.close().unwrap();
    assert!(storage.open_topic(&topic("c")).is_err());
}

#[test]
fn meta_is_saved_and_loaded_with_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path(), config(4096));
    let log = storage.open_topic(&topic("t")).unwrap();
    assert_eq!(log.meta(), None);
    let meta = TopicMeta {
        incarnation: 0xfeed,
        paused: true,
    };
    log.save_meta(meta).unwrap();
    assert_eq!(log.meta(), Some(meta));
    for i in 0..10 {
        log.append(vec![numbered(i)]).unwrap();
    }
    log.trim(4);
    storage.close().unwrap();
    drop(storage);
    let json = std::fs::read_to_string(topic_dir(dir.path(), "t").join("meta.json")).unwrap();
    assert_eq!(json, r#"{"incarnation":65261,"paused":true,"start":4}"#);

    let storage = open(dir.path(), config(4096));
    let log = storage.open_topic(&topic("t")).unwrap();
    assert_eq!(log.meta(), Some(meta));
    assert_eq!((log.start(), log.end()), (4, 10));
    assert_eq!(offsets(&read_all(&*log)), (4..10).collect::<Vec<_>>());
}

#[test]
fn channel_stores_are_listed_opened_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let channel = |n: &str| ChannelName::new(n).unwrap();
    let storage = open(dir.path(), config(4096));
    let log = storage.open_topic(&topic("t")).unwrap();
    assert!(log.existing_channels().is_empty());
    let (first, record) = log.open_channel(&channel("b")).unwrap();
    assert!(record.is_none());
    let (again, _) = log.open_channel(&channel("b")).unwrap();
    assert!(Arc::ptr_eq(&first, &again));
    log.open_channel(&channel("a")).unwrap();
    log.open_channel(&channel("x#ephemeral")).unwrap();
    let channels = topic_dir(dir.path(), "t").join("channels");
    assert!(!channels.join("x#ephemeral").exists());
    storage.close().unwrap();
    drop(storage);

    let storage = open(dir.path(), config(4096));
    let log = storage.open_topic(&topic("t")).unwrap();
    assert_eq!(log.existing_channels(), [channel("a"), channel("b")]);
    log.open_channel(&channel("a")).unwrap();
    log.delete_channel(&channel("a")).unwrap();
    log.delete_channel(&channel("b")).unwrap();
    assert!(!channels.join("a").exists());
    assert!(!channels.join("b").exists());
    assert!(log.existing_channels().is_empty());
}
