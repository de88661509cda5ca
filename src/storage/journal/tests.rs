use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::files::{journal_name, CHECKPOINT, CHECKPOINT_TMP};
use super::*;
use crate::storage::{ChannelOptions, PendingEntry};

/// The time every test records at unless it says otherwise: records at one instant never
/// find a write overdue, so only flushes write.
fn t0() -> Instant {
    static T0: OnceLock<Instant> = OnceLock::new();
    *T0.get_or_init(Instant::now)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Whether every recorded event is written.
fn all_written(store: &FileChannelStore) -> bool {
    lock(&store.buffered).unwritten_since().is_none()
}

fn open(dir: &Path) -> (Arc<FileChannelStore>, Option<ChannelRecord>) {
    FileChannelStore::open(dir, "orders", "ch1").unwrap()
}

/// Records `events` in `store` and applies them to `model`.
fn record(store: &FileChannelStore, model: &mut ChannelRecord, events: &[StateEvent]) {
    for event in events {
        model.apply(event);
    }
    store.record(&mut events.to_vec(), t0());
}

fn pending(offset: u64, attempts: u16, due_ms: u64) -> StateEvent {
    StateEvent::Pending {
        offset,
        entry: PendingEntry { attempts, due_ms },
    }
}

fn journal_path(dir: &Path, store: &FileChannelStore) -> PathBuf {
    dir.join(journal_name(lock(&store.writer).generation))
}

fn file_names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Runs `f` with a subscriber that keeps what is logged, and returns that text too.
fn capture_logs<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Logs(Arc<Mutex<Vec<u8>>>);
    impl Write for Logs {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let logs = Logs::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let out = tracing::subscriber::with_default(subscriber, f);
    let text = String::from_utf8_lossy(&logs.0.lock().unwrap()).into_owned();
    (out, text)
}

#[test]
fn new_directory_recovers_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("orders").join("ch1");
    let (store, recovered) = open(&dir);
    assert_eq!(recovered, None);
    assert!(!store.wants_checkpoint());
    assert_eq!(file_names(&dir), ["journal-0"]);
    drop(store);
    // Nothing recorded: still a new channel.
    assert_eq!(open(&dir).1, None);
}

#[test]
fn flushed_events_replay_on_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    let mut model = ChannelRecord::default();
    record(&store, &mut model, &[StateEvent::Cursor(5)]);
    record(
        &store,
        &mut model,
        &[pending(2, 3, 99), StateEvent::Settle(3)],
    );
    record(
        &store,
        &mut model,
        &[StateEvent::Empty(2), StateEvent::Cursor(8)],
    );
    let options = ChannelOptions {
        paused: true,
        max_attempts: 4,
        msg_timeout_ms: 30_000,
        ordering: crate::storage::OrderBy::Channel,
    };
    record(
        &store,
        &mut model,
        &[StateEvent::Options(options), StateEvent::Settle(6)],
    );
    store.flush(true, t0()).unwrap();
    drop(store);

    let expected = ChannelRecord {
        cursor: 8,
        options,
        pending: [(2, (3, 99)), (4, (1, 0)), (5, (1, 0)), (7, (1, 0))]
            .into_iter()
            .map(|(offset, (attempts, due_ms))| (offset, PendingEntry { attempts, due_ms }))
            .collect(),
    };
    assert_eq!(model, expected);
    let (store, recovered) = open(tmp.path());
    assert_eq!(recovered, Some(expected.clone()));
    // Recovery compacted the state into a new generation.
    assert_eq!(file_names(tmp.path()), ["checkpoint", "journal-1"]);
    drop(store);
    assert_eq!(open(tmp.path()).1, Some(expected));
}

#[test]
fn events_after_a_checkpoint_replay_over_it() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    let mut model = ChannelRecord::default();
    record(
        &store,
        &mut model,
        &[StateEvent::Cursor(10), StateEvent::Settle(1)],
    );
    store.flush(false, t0()).unwrap();
    record(&store, &mut model, &[StateEvent::Settle(2)]);
    store.checkpoint(model.clone());
    record(
        &store,
        &mut model,
        &[StateEvent::Cursor(12), pending(0, 2, 5)],
    );
    store.flush(false, t0()).unwrap();
    assert_eq!(file_names(tmp.path()), ["checkpoint", "journal-1"]);
    record(&store, &mut model, &[StateEvent::Settle(11)]);
    store.flush(true, t0()).unwrap();
    drop(store);
    assert_eq!(open(tmp.path()).1, Some(model));
}

#[test]
fn unflushed_checkpoint_is_not_recovered() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    let mut model = ChannelRecord::default();
    record(&store, &mut model, &[StateEvent::Cursor(4)]);
    store.flush(false, t0()).unwrap();
    let written = model.clone();
    record(&store, &mut model, &[StateEvent::Settle(0)]);
    store.checkpoint(model.clone());
    record(&store, &mut model, &[StateEvent::Settle(1)]);
    drop(store);
    assert_eq!(open(tmp.path()).1, Some(written));
}

#[test]
fn unflushed_second_checkpoint_leaves_the_first_and_its_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    let mut model = ChannelRecord::default();
    record(&store, &mut model, &[StateEvent::Cursor(4)]);
    store.checkpoint(model.clone());
    record(&store, &mut model, &[StateEvent::Settle(2)]);
    store.flush(false, t0()).unwrap();
    let written = model.clone();
    record(&store, &mut model, &[StateEvent::Settle(3)]);
    store.checkpoint(model.clone());
    drop(store);
    assert_eq!(open(tmp.path()).1, Some(written));
}

/// Writes three records, flushing each, and returns the model after each one.
fn three_flushed_records(store: &FileChannelStore) -> Vec<ChannelRecord> {
    let mut model = ChannelRecord::default();
    let mut states = Vec::new();
    for events in [
        vec![StateEvent::Cursor(3)],
        vec![StateEvent::Settle(0), pending(1, 2, 50)],
        vec![StateEvent::Settle(2), StateEvent::Cursor(6)],
    ] {
        record(store, &mut model, &events);
        store.flush(false, t0()).unwrap();
        states.push(model.clone());
    }
    states
}

#[test]
fn torn_journal_tail_is_ignored_with_a_warning() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    let states = three_flushed_records(&store);
    let path = journal_path(tmp.path(), &store);
    drop(store);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len - 3).unwrap();

    let ((store, recovered), logs) = capture_logs(|| open(tmp.path()));
    assert_eq!(recovered, Some(states[1].clone()));
    assert!(logs.contains("torn record"), "{logs}");
    assert!(logs.contains("ignored_bytes="), "{logs}");
    assert!(logs.contains("journal-0"), "{logs}");

    // The torn tail is gone: records written after recovery replay.
    let mut model = states[1].clone();
    record(&store, &mut model, &[StateEvent::Settle(1)]);
    store.flush(true, t0()).unwrap();
    drop(store);
    assert_eq!(open(tmp.path()).1, Some(model));
}

#[test]
fn flipped_byte_stops_replay_at_that_record() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    let states = three_flushed_records(&store);
    let path = journal_path(tmp.path(), &store);
    drop(store);
    let mut bytes = fs::read(&path).unwrap();
    // Magic (8), first record (8 + 9), then the second record's header (8): its payload.
    bytes[8 + 17 + 8 + 4] ^= 0x40;
    fs::write(&path, &bytes).unwrap();
    let ((_, recovered), logs) = capture_logs(|| open(tmp.path()));
    assert_eq!(recovered, Some(states[0].clone()));
    assert!(logs.contains("checksum mismatch"), "{logs}");
    assert!(logs.contains("position=25"), "{logs}");
}

#[test]
fn zero_filled_tail_is_ignored() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    let states = three_flushed_records(&store);
    let path = journal_path(tmp.path(), &store);
    drop(store);
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(&[0; 4096]).unwrap();
    drop(file);
    assert_eq!(open(tmp.path()).1, Some(states[2].clone()));
}

#[test]
fn journal_with_a_torn_first_record_is_a_new_channel() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    store.record(&mut vec![StateEvent::Cursor(3)], t0());
    store.flush(false, t0()).unwrap();
    let path = journal_path(tmp.path(), &store);
    drop(store);
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(12).unwrap();
    let (store, recovered) = open(tmp.path());
    assert_eq!(recovered, None);
    // The journal was emptied, so new records are not hidden behind the torn one.
    let mut model = ChannelRecord::default();
    record(&store, &mut model, &[StateEvent::Cursor(1)]);
    store.flush(false, t0()).unwrap();
    drop(store);
    assert_eq!(open(tmp.path()).1, Some(model));
}

#[test]
fn corrupt_checkpoint_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    let mut model = ChannelRecord::default();
    record(&store, &mut model, &[StateEvent::Cursor(3)]);
    store.flush(false, t0()).unwrap();
    drop(store);
    drop(open(tmp.path())); // writes a checkpoint
    let path = tmp.path().join(CHECKPOINT);
    let good = fs::read(&path).unwrap();
    for corrupt in [
        {
            let mut bytes = good.clone();
            bytes[20] ^= 1;
            bytes
        },
        good[..good.len() - 2].to_vec(),
        b"QVCHKPT9".to_vec(),
    ] {
        fs::write(&path, &corrupt).unwrap();
        let err = FileChannelStore::open(tmp.path(), "orders", "ch1").unwrap_err();
        assert!(matches!(err, StorageError::Corrupt { .. }), "{err}");
        assert!(err.to_string().contains("checkpoint"), "{err}");
    }
    fs::write(&path, &good).unwrap();
    assert_eq!(open(tmp.path()).1, Some(model));
}

#[test]
fn stray_files_are_removed_on_open() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    store.record(&mut vec![StateEvent::Cursor(1)], t0());
    store.flush(false, t0()).unwrap();
    drop(store);
    fs::write(tmp.path().join(CHECKPOINT_TMP), b"half").unwrap();
    fs::write(tmp.path().join("journal-7"), b"old").unwrap();
    fs::write(tmp.path().join("unrelated"), b"kept").unwrap();
    let (_, recovered) = open(tmp.path());
    assert!(recovered.is_some());
    assert_eq!(
        file_names(tmp.path()),
        ["checkpoint", "journal-1", "unrelated"]
    );
}

#[test]
fn wants_checkpoint_after_a_mebibyte_of_journal() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    // 1000 settles encode to 8 + 9000 bytes per record.
    let batch: Vec<StateEvent> = (0..1000).map(StateEvent::Settle).collect();
    let mut records = 0;
    while !store.wants_checkpoint() {
        store.record(&mut batch.clone(), t0());
        records += 1;
        if records % 10 == 0 {
            store.flush(false, t0()).unwrap();
        }
    }
    assert_eq!(records, (1 << 20) / 9008 + 1);
    store.checkpoint(ChannelRecord::default());
    assert!(!store.wants_checkpoint());
}

#[test]
fn wants_checkpoint_after_the_cursor_advances() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    store.record(&mut vec![StateEvent::Cursor(65_536)], t0());
    assert!(!store.wants_checkpoint());
    store.record(&mut vec![StateEvent::Cursor(65_537)], t0());
    assert!(store.wants_checkpoint());
    let record = ChannelRecord {
        cursor: 65_537,
        ..ChannelRecord::default()
    };
    store.checkpoint(record.clone());
    assert!(!store.wants_checkpoint());
    store.flush(false, t0()).unwrap();
    drop(store);

    // Counted from the recovered cursor after a restart.
    let (store, _) = open(tmp.path());
    store.record(&mut vec![StateEvent::Cursor(65_537 + 65_536)], t0());
    assert!(!store.wants_checkpoint());
    store.record(&mut vec![StateEvent::Cursor(65_537 + 65_537)], t0());
    assert!(store.wants_checkpoint());
}

#[test]
fn delete_makes_every_call_a_noop() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ch1");
    let (store, _) = open(&dir);
    store.record(&mut vec![StateEvent::Cursor(70_000)], t0());
    store.flush(false, t0()).unwrap();
    store.delete().unwrap();
    assert!(!dir.exists());
    let mut events = vec![StateEvent::Settle(1)];
    store.record(&mut events, t0());
    assert!(events.is_empty());
    store.checkpoint(ChannelRecord::default());
    assert!(!store.wants_checkpoint());
    store.flush(true, t0()).unwrap();
    assert!(!dir.exists());
    store.delete().unwrap();
}

#[test]
fn failed_checkpoint_is_retried_and_later_events_follow_it() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("ch1");
    let (store, _) = open(&dir);
    let mut model = ChannelRecord::default();
    record(&store, &mut model, &[StateEvent::Cursor(5)]);
    store.flush(false, t0()).unwrap();
    fs::remove_dir_all(&dir).unwrap();

    store.checkpoint(model.clone());
    record(&store, &mut model, &[StateEvent::Settle(1)]);
    assert!(store.flush(true, t0()).is_err());
    // Order matters from here: replayed the other way round, 1 would be settled.
    record(&store, &mut model, &[pending(1, 3, 0)]);
    assert!(store.flush(true, t0()).is_err());

    fs::create_dir(&dir).unwrap();
    store.flush(true, t0()).unwrap();
    drop(store);
    assert_eq!(open(&dir).1, Some(model));
}

#[test]
fn failed_journal_write_is_retried_before_newer_records() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    let mut model = ChannelRecord::default();
    record(&store, &mut model, &[StateEvent::Cursor(5)]);
    store.flush(false, t0()).unwrap();

    // A read-only handle makes the next write fail.
    let path = journal_path(tmp.path(), &store);
    let good = lock(&store.writer)
        .journal
        .replace(Arc::new(File::open(&path).unwrap()))
        .unwrap();
    record(&store, &mut model, &[StateEvent::Settle(1)]);
    assert!(store.flush(false, t0()).is_err());
    // Order matters: replayed the other way round, 1 would be settled.
    record(&store, &mut model, &[pending(1, 4, 0)]);
    lock(&store.writer).journal = Some(good);
    store.flush(true, t0()).unwrap();
    drop(store);
    assert_eq!(open(tmp.path()).1, Some(model));
}

#[test]
fn bytes_of_a_failed_write_are_cut_before_the_retry() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    let mut model = ChannelRecord::default();
    record(&store, &mut model, &[StateEvent::Cursor(5)]);
    store.flush(false, t0()).unwrap();

    // As if a write failed halfway and the truncation after it failed too.
    let path = journal_path(tmp.path(), &store);
    let mut file = OpenOptions::new().append(true).open(&path).unwrap();
    file.write_all(&[7; 5]).unwrap();
    lock(&store.writer).dirty = true;
    record(&store, &mut model, &[StateEvent::Settle(4)]);
    store.flush(false, t0()).unwrap();
    drop(store);
    assert_eq!(open(tmp.path()).1, Some(model));
}

/// splitmix64: a seeded generator, so failures reproduce without extra dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn random_event(rng: &mut Rng, model: &ChannelRecord) -> StateEvent {
    let near = |rng: &mut Rng| (model.cursor + 3).saturating_sub(rng.below(12));
    match rng.below(100) {
        0..=34 => StateEvent::Cursor(model.cursor + rng.below(6)),
        35..=59 => StateEvent::Settle(near(rng)),
        60..=84 => pending(near(rng), rng.below(10) as u16, rng.below(3) * 1000),
        85..=92 => StateEvent::Empty(near(rng)),
        _ => StateEvent::Options(ChannelOptions {
            paused: rng.below(2) == 1,
            max_attempts: rng.below(20) as u16,
            msg_timeout_ms: rng.below(100_000),
            ordering: match rng.below(3) {
                0 => crate::storage::OrderBy::Unordered,
                1 => crate::storage::OrderBy::Channel,
                _ => crate::storage::OrderBy::Key(crate::storage::HeaderName::new("k").unwrap()),
            },
        }),
    }
}

/// Random histories of records at an advancing clock (so that some records find a write
/// overdue), flushes, checkpoints, clean reopens and crashes (dropping the store without a
/// flush) recover exactly what a model applied up to the last write.
#[test]
fn random_histories_recover_the_written_model() {
    for seed in 0..40 {
        let tmp = tempfile::tempdir().unwrap();
        let mut rng = Rng(seed);
        let (mut store, _) = open(tmp.path());
        let mut model = ChannelRecord::default();
        let mut written = ChannelRecord::default();
        let mut clock = t0();
        for step in 0..400 {
            clock += ms(rng.below(3));
            let mut events = Vec::new();
            for _ in 0..rng.below(5) + 1 {
                let event = random_event(&mut rng, &model);
                model.apply(&event);
                events.push(event);
            }
            store.record(&mut events, clock);
            if all_written(&store) {
                written = model.clone();
            }
            match rng.below(100) {
                0..=14 => store.flush(rng.below(4) == 0, clock).unwrap(),
                15..=19 => store.checkpoint(model.clone()),
                20..=21 => {
                    store.flush(false, clock).unwrap();
                    drop(store);
                    let recovered;
                    (store, recovered) = open(tmp.path());
                    assert_eq!(
                        recovered.unwrap_or_default(),
                        model,
                        "seed {seed} step {step}"
                    );
                }
                22 => {
                    drop(store);
                    let recovered;
                    (store, recovered) = open(tmp.path());
                    assert_eq!(
                        recovered.unwrap_or_default(),
                        written,
                        "seed {seed} step {step}"
                    );
                    model = written.clone();
                }
                _ => {}
            }
            if all_written(&store) {
                written = model.clone();
            }
        }
        store.flush(true, clock).unwrap();
        drop(store);
        assert_eq!(open(tmp.path()).1.unwrap_or_default(), model, "seed {seed}");
    }
}

#[test]
fn an_overdue_event_is_written_by_the_next_record() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    let mut model = ChannelRecord::default();
    let mut events = vec![StateEvent::Cursor(3)];
    model.apply(&events[0]);
    store.record(&mut events, t0());
    let mut events = vec![StateEvent::Settle(0)];
    model.apply(&events[0]);
    store.record(&mut events, t0() + ms(4));
    assert!(!all_written(&store));
    let lag = store.lag(t0() + ms(4));
    assert_eq!((lag.current, lag.max), (ms(4), ms(4)));

    // No event, but the oldest one is due: written before `record` returns.
    store.record(&mut Vec::new(), t0() + RECORD_WRITES_AFTER);
    assert!(all_written(&store));
    let lag = store.lag(t0() + ms(9));
    assert_eq!(
        (lag.current, lag.max),
        (Duration::ZERO, RECORD_WRITES_AFTER)
    );
    // A crash: no flush.
    drop(store);
    assert_eq!(open(tmp.path()).1, Some(model));
}

/// While a flush writes a checkpoint's files (without the write lock), records are still
/// written, and a crash on either side of the rename recovers all of them.
#[test]
fn records_written_while_a_checkpoint_is_installed_survive_a_crash_on_either_side() {
    for crash_before_rename in [true, false] {
        let tmp = tempfile::tempdir().unwrap();
        let (store, _) = open(tmp.path());
        let mut model = ChannelRecord::default();
        record(&store, &mut model, &[StateEvent::Cursor(6)]);
        store.flush(false, t0()).unwrap();
        record(&store, &mut model, &[StateEvent::Settle(1)]);
        store.checkpoint(model.clone());
        record(&store, &mut model, &[StateEvent::Settle(2)]);
        // A write takes the checkpoint; the flush writes its files.
        store.write(t0()).unwrap();
        let prepared = store.prepare_checkpoint().unwrap().unwrap();
        assert!(!store.wants_checkpoint());
        record(&store, &mut model, &[pending(3, 2, 0)]);
        store.record(&mut Vec::new(), t0() + RECORD_WRITES_AFTER);
        assert!(all_written(&store));
        if crash_before_rename {
            drop((prepared, store));
            assert_eq!(open(tmp.path()).1, Some(model));
            continue;
        }
        store
            .finish_checkpoint(prepared, &mut Flushing::default(), t0())
            .unwrap();
        assert_eq!(file_names(tmp.path()), ["checkpoint", "journal-1"]);
        record(&store, &mut model, &[StateEvent::Settle(4)]);
        store.record(&mut Vec::new(), t0() + RECORD_WRITES_AFTER);
        assert!(all_written(&store));
        drop(store);
        assert_eq!(open(tmp.path()).1, Some(model));
    }
}

/// Channels record and checkpoint under their own lock, at a clock that makes many records
/// write, while two threads flush and install checkpoints: what a crash after the last
/// record leaves is still the model's state, so writes neither lose nor reorder records.
#[test]
fn concurrent_writes_and_flushes_keep_records_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let (store, _) = open(tmp.path());
    let channel = Arc::new(Mutex::new((ChannelRecord::default(), Rng(7))));
    let clock = std::sync::atomic::AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    std::thread::scope(|scope| {
        let writers: Vec<_> = (0..3)
            .map(|_| {
                scope.spawn(|| {
                    for _ in 0..2000 {
                        let mut guard = channel.lock().unwrap();
                        let (model, rng) = &mut *guard;
                        let event = random_event(rng, model);
                        model.apply(&event);
                        let now = t0() + ms(clock.fetch_add(1, Ordering::Relaxed));
                        store.record(&mut vec![event], now);
                        if rng.below(200) == 0 {
                            store.checkpoint(model.clone());
                        }
                    }
                })
            })
            .collect();
        for _ in 0..2 {
            scope.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    store.flush(false, t0()).unwrap();
                }
            });
        }
        for writer in writers {
            writer.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
    });
    store.record(&mut Vec::new(), t0() + Duration::from_secs(3600));
    assert!(all_written(&store));
    // A crash: no flush.
    drop(store);
    let model = channel.lock().unwrap().0.clone();
    assert_eq!(open(tmp.path()).1.unwrap_or_default(), model);
}
