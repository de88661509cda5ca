//! Torn tails and corrupt records, on recovery and on read.

use std::fs::OpenOptions;

use super::*;

/// Appends `n` numbered messages one by one.
fn fill(log: &dyn TopicLog, n: u64) {
    for i in 0..n {
        log.append(vec![numbered(i)]).unwrap();
    }
}

#[test]
fn a_torn_tail_is_cut_off_and_appends_continue() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path(), config(1 << 20));
    fill(&*storage.open_topic(&topic("t")).unwrap(), 10);
    drop(storage);
    let segment = &segment_files(dir.path(), "t")[0];
    let last = *record_positions(segment).last().unwrap();
    let file = OpenOptions::new().write(true).open(segment).unwrap();
    file.set_len(last + 20).unwrap();
    drop(file);

    let storage = open(dir.path(), config(1 << 20));
    let log = storage.open_topic(&topic("t")).unwrap();
    assert_eq!(log.end(), 9);
    assert_eq!(segment.metadata().unwrap().len(), last);
    assert_eq!(
        log.stats().corrupt_records,
        0,
        "a torn tail is not corruption"
    );
    assert_eq!(offsets(&read_all(&*log)), (0..9).collect::<Vec<_>>());
    assert_eq!(log.append(vec![msg("again")]).unwrap(), 9..10);
    drop(storage);
    let storage = open(dir.path(), config(1 << 20));
    let log = storage.open_topic(&topic("t")).unwrap();
    assert_eq!(offsets(&read_all(&*log)), (0..10).collect::<Vec<_>>());
}

#[test]
fn a_segment_torn_inside_its_header_is_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path(), config(1 << 20));
    storage.open_topic(&topic("t")).unwrap();
    drop(storage);
    let segment = &segment_files(dir.path(), "t")[0];
    std::fs::write(segment, b"QV").unwrap();
    let storage = open(dir.path(), config(1 << 20));
    let log = storage.open_topic(&topic("t")).unwrap();
    assert_eq!(log.append(vec![msg("a")]).unwrap(), 0..1);
}

#[test]
fn a_corrupt_record_mid_segment_is_skipped_on_recovery() {
    // A flipped body byte (bad CRC) and a flipped length byte (bad frame).
    for (record, delta) in [(10, 30), (10, 1), (0, 30)] {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path(), config(1 << 20));
        fill(&*storage.open_topic(&topic("t")).unwrap(), 20);
        drop(storage);
        let segment = &segment_files(dir.path(), "t")[0];
        flip(segment, record_positions(segment)[record] + delta);
        let len = segment.metadata().unwrap().len();

        let storage = open(dir.path(), config(1 << 20));
        let log = storage.open_topic(&topic("t")).unwrap();
        assert_eq!(log.stats().corrupt_records, 1);
        assert_eq!(segment.metadata().unwrap().len(), len, "not truncated");
        assert_eq!(log.end(), 20);
        let all = read_all(&*log);
        let want: Vec<u64> = (0..20).filter(|&o| o != record as u64).collect();
        assert_eq!(offsets(&all), want);
        for (offset, message) in &all {
            assert_eq!(*message.body, *numbered(*offset).body);
        }
        assert!(log.get(record as u64).is_none());
        assert_eq!(log.append(vec![msg("more")]).unwrap(), 20..21);
    }
}

#[test]
fn corruption_in_an_indexed_sealed_segment_is_skipped_at_read_time() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path(), config(4096));
    fill(&*storage.open_topic(&topic("t")).unwrap(), 100);
    storage.close().unwrap();
    drop(storage);
    let first = &segment_files(dir.path(), "t")[0];
    let positions = record_positions(first);
    let victim = positions.len() / 2;
    flip(first, positions[victim] + 40);

    let storage = open(dir.path(), config(4096));
    let log = file_log(&storage, "t");
    assert_eq!(log.scanned_at_open(), 0, "clean: trusted");
    assert_eq!(log.stats().corrupt_records, 0);
    let all = read_all(&*log);
    let want: Vec<u64> = (0..100).filter(|&o| o != victim as u64).collect();
    assert_eq!(offsets(&all), want);
    assert_eq!(log.stats().corrupt_records, 1);
    assert!(log.get(victim as u64).is_none());
    let mut out = Vec::new();
    log.read(victim as u64, 3, &mut out);
    assert_eq!(
        offsets(&out),
        [victim as u64 + 1, victim as u64 + 2, victim as u64 + 3]
    );
    assert_eq!(log.stats().corrupt_records, 1, "reported once");
}

#[test]
fn garbage_files_are_ignored_or_set_aside() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path(), config(4096));
    fill(&*storage.open_topic(&topic("t")).unwrap(), 100);
    drop(storage);
    let topic_dir = topic_dir(dir.path(), "t");
    std::fs::write(topic_dir.join("notes.txt"), b"hello").unwrap();
    std::fs::write(topic_dir.join("00000000000000099999.idx"), b"orphan").unwrap();
    let idx = segment_files(dir.path(), "t")[0].with_extension("idx");
    std::fs::write(&idx, b"QVIDX001garbage").unwrap();
    std::fs::create_dir_all(dir.path().join("topics").join("bad name")).unwrap();
    let storage = open(dir.path(), config(4096));
    let log = storage.open_topic(&topic("t")).unwrap();
    assert_eq!(offsets(&read_all(&*log)), (0..100).collect::<Vec<_>>());
    assert!(!topic_dir.join("00000000000000099999.idx").exists());
    assert_eq!(storage.existing_topics(), [topic("t")]);
    drop(storage);

    // A file that is not a segment at all is set aside; its offsets are lost.
    let files = segment_files(dir.path(), "t");
    let base_of =
        |p: &PathBuf| -> u64 { p.file_stem().unwrap().to_str().unwrap().parse().unwrap() };
    std::fs::write(&files[0], b"NOTASEGMENT").unwrap();
    std::fs::write(files.last().unwrap(), b"NOTASEGMENT EITHER").unwrap();
    let storage = open(dir.path(), config(4096));
    let log = storage.open_topic(&topic("t")).unwrap();
    assert_eq!(log.stats().corrupt_records, 2);
    assert!(topic_dir.join(format!("{:020}.log.corrupt", 0)).exists());
    let last_base = base_of(files.last().unwrap());
    let want: Vec<u64> = (base_of(&files[1])..last_base).collect();
    assert_eq!(offsets(&read_all(&*log)), want);
    assert_eq!(log.start(), base_of(&files[1]));
    assert_eq!(
        log.append(vec![msg("x")]).unwrap(),
        last_base..last_base + 1
    );
}

#[test]
fn records_below_a_saved_start_are_not_mistaken_for_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path(), config(1 << 20));
    let log = storage.open_topic(&topic("t")).unwrap();
    fill(&*log, 10);
    log.trim(5);
    storage.close().unwrap();
    drop(storage);
    let storage = open(dir.path(), config(1 << 20));
    storage
        .open_topic(&topic("t"))
        .unwrap()
        .append(vec![msg("x")])
        .unwrap();
    drop(storage);
    let storage = open(dir.path(), config(1 << 20));
    let log = file_log(&storage, "t");
    assert_eq!(log.scanned_at_open(), 11);
    assert_eq!(log.stats().corrupt_records, 0);
    assert_eq!(offsets(&read_all(&*log)), (5..11).collect::<Vec<_>>());
}
