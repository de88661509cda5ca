//! Trim and retention.

use std::time::Duration;

use super::*;

#[test]
fn trim_deletes_only_segments_wholly_below_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path(), config(4096));
    let log = storage.open_topic(&topic("t")).unwrap();
    for i in 0..200 {
        log.append(vec![numbered(i)]).unwrap();
    }
    let files = segment_files(dir.path(), "t");
    let second_base: u64 = files[1]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let third_base: u64 = files[2]
        .file_stem()
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();

    log.trim(second_base + 1);
    assert_eq!(log.start(), second_base + 1);
    let left = segment_files(dir.path(), "t");
    assert_eq!(left, files[1..], "only the first segment went");
    let all = read_all(&*log);
    assert_eq!(all[0].0, second_base + 1);
    assert!(log.get(second_base).is_none());

    log.trim(third_base);
    assert_eq!(segment_files(dir.path(), "t"), files[2..]);

    log.trim(10_000);
    assert_eq!((log.start(), log.end()), (200, 200));
    assert_eq!(
        segment_files(dir.path(), "t"),
        files[files.len() - 1..],
        "active kept"
    );
    assert!(read_all(&*log).is_empty());
    assert_eq!(
        log.stats().retention_dropped_messages,
        0,
        "trim is not retention"
    );
    assert_eq!(log.append(vec![msg("a")]).unwrap(), 200..201);
    assert_eq!(offsets(&read_all(&*log)), [200]);
    log.trim(100);
    assert_eq!(log.start(), 200, "the start never goes back");
}

#[test]
fn max_bytes_deletes_the_oldest_segments_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(4096);
    config.max_bytes = Some(3 * 4096);
    let storage = open(dir.path(), config);
    let log = file_log(&storage, "t");
    for i in 0..300 {
        log.append(vec![numbered(i)]).unwrap();
    }
    log.trim(10);
    log.enforce_retention();
    let stats = log.stats();
    assert!(stats.bytes <= 3 * 4096, "{stats:?}");
    let start = log.start();
    assert!(start > 10);
    assert_eq!(stats.retention_dropped_messages, start - 10);
    assert!(
        stats.retention_dropped_bytes >= (start - 10) * 100,
        "{stats:?}"
    );
    assert_eq!(read_all(&*log)[0].0, start);
    assert_eq!(read_all(&*log).last().unwrap().0, 299);
}

#[test]
fn max_age_deletes_old_segments_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(1 << 20);
    config.max_age = Some(Duration::from_secs(60));
    let storage = open(dir.path(), config);
    let log = file_log(&storage, "t");
    let hour_ago = now_ns() - 3600 * 1_000_000_000;
    for i in 0..30 {
        let mut m = numbered(i);
        m.timestamp_ns = hour_ago;
        log.append(vec![m]).unwrap();
    }
    // Old messages roll the active segment, so each old batch sits in a sealed segment.
    log.append(vec![numbered(30), numbered(31)]).unwrap();
    log.enforce_retention();
    let stats = log.stats();
    assert_eq!(stats.retention_dropped_messages, 30, "{stats:?}");
    assert_eq!(log.start(), 30);
    assert_eq!(offsets(&read_all(&*log)), [30, 31]);
    assert_eq!(segment_files(dir.path(), "t").len(), 1);
}

#[test]
fn an_idle_active_segment_ages_out() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(1 << 20);
    config.max_age = Some(Duration::from_secs(60));
    let storage = open(dir.path(), config);
    let log = file_log(&storage, "t");
    let mut m = numbered(0);
    m.timestamp_ns = now_ns() - 3600 * 1_000_000_000;
    log.append(vec![m]).unwrap();
    log.enforce_retention();
    assert_eq!(log.stats().retention_dropped_messages, 1);
    assert_eq!((log.start(), log.end()), (1, 1));
    assert_eq!(log.append(vec![msg("new")]).unwrap(), 1..2);
}

#[test]
fn an_empty_log_restarts_at_a_later_offset_and_reopens_there() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path(), config(4096));
    let log = storage.open_topic(&topic("t")).unwrap();
    log.append(vec![numbered(0), numbered(1)]).unwrap();
    // Not empty: refused, nothing changes.
    assert!(log.restart_at(1000).is_err());
    assert_eq!((log.start(), log.end()), (0, 2));
    log.trim(2);
    log.restart_at(1000).unwrap();
    assert_eq!((log.start(), log.end()), (1000, 1000));
    assert_eq!(log.append(vec![numbered(7)]).unwrap(), 1000..1001);
    // Not backwards.
    assert!(log.restart_at(10).is_err());
    let mut out = Vec::new();
    log.read(0, 10, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].0, 1000);
    storage.close().unwrap();
    drop((log, storage));

    let storage = open(dir.path(), config(4096));
    let log = storage.open_topic(&topic("t")).unwrap();
    assert_eq!((log.start(), log.end()), (1000, 1001));
    assert_eq!(log.get(1000).unwrap().body, numbered(7).body);
}
