//! The fsync policies and `durable`.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::*;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Polls a future once.
fn poll_once<F: Future>(f: F) -> Poll<F::Output> {
    pin!(f).poll(&mut Context::from_waker(Waker::noop()))
}

#[test]
fn always_resolves_durable_after_an_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path(), with_fsync(config(4096), FsyncPolicy::Always));
    let log = storage.open_topic(&topic("t")).unwrap();
    let rt = runtime();
    for i in 0..50 {
        let range = log.append(vec![numbered(i)]).unwrap();
        rt.block_on(log.durable(range.end)).unwrap();
    }
    let stats = log.stats();
    assert!(stats.fsyncs >= 1, "{stats:?}");
    assert!(stats.fsync_p50_us >= 1 && stats.fsync_p99_us >= stats.fsync_p50_us);
    // Sealed segments got their index files after their fsync.
    let idx = segment_files(dir.path(), "t")[0].with_extension("idx");
    assert!(idx.exists());
    // Already durable: at once.
    assert!(matches!(poll_once(log.durable(10)), Poll::Ready(Ok(()))));
}

#[test]
fn group_commit_shares_fsyncs_between_publishers() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path(), with_fsync(config(1 << 20), FsyncPolicy::Always));
    let file_log = file_log(&storage, "t");
    // As slow as a real disk, even where the temp dir is in memory.
    file_log
        .sync
        .slow_us
        .store(500, std::sync::atomic::Ordering::Relaxed);
    let log: Arc<dyn TopicLog> = file_log;
    let rt = runtime();
    let publishers = 16;
    let each = 100;
    std::thread::scope(|s| {
        for p in 0..publishers {
            let log = log.clone();
            let handle = rt.handle().clone();
            s.spawn(move || {
                for i in 0..each {
                    let range = log.append(vec![numbered(p * 1000 + i)]).unwrap();
                    handle.block_on(log.durable(range.end)).unwrap();
                }
            });
        }
    });
    let appends = publishers * each;
    let stats = log.stats();
    assert_eq!(log.end(), appends);
    assert!(stats.fsyncs * 4 < appends, "{stats:?}");
}

#[test]
fn interval_and_never_resolve_at_once() {
    for fsync in [
        FsyncPolicy::Interval(Duration::from_millis(5)),
        FsyncPolicy::Never,
    ] {
        let dir = tempfile::tempdir().unwrap();
        let storage = open(dir.path(), with_fsync(config(4096), fsync));
        let log = storage.open_topic(&topic("t")).unwrap();
        let range = log.append(vec![msg("a")]).unwrap();
        assert!(matches!(
            poll_once(log.durable(range.end)),
            Poll::Ready(Ok(()))
        ));
    }
}

#[test]
fn interval_fsyncs_in_the_background() {
    let dir = tempfile::tempdir().unwrap();
    let policy = FsyncPolicy::Interval(Duration::from_millis(5));
    let storage = open(dir.path(), with_fsync(config(4096), policy));
    let log = storage.open_topic(&topic("t")).unwrap();
    for i in 0..100 {
        log.append(vec![numbered(i)]).unwrap();
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while log.stats().fsyncs == 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(log.stats().fsyncs > 0);
}

#[test]
fn pending_durable_futures_fail_when_the_topic_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path(), with_fsync(config(4096), FsyncPolicy::Always));
    let log = storage.open_topic(&topic("t")).unwrap();
    // Far beyond anything appended: only the deletion can settle it.
    let durable = log.durable(1_000);
    storage.delete_topic(&topic("t")).unwrap();
    assert!(runtime().block_on(durable).is_err());
}

#[test]
fn a_failed_fsync_fails_durable_for_its_range_only() {
    let dir = tempfile::tempdir().unwrap();
    let storage = open(dir.path(), with_fsync(config(4096), FsyncPolicy::Always));
    let log = file_log(&storage, "t");
    let rt = runtime();
    log.sync
        .fail_next
        .store(true, std::sync::atomic::Ordering::Relaxed);
    let lost = log.append(vec![msg("a")]).unwrap();
    let e = rt.block_on(log.durable(lost.end)).unwrap_err();
    assert_eq!(e.to_string(), "topic t: fsync failed");
    let source = std::error::Error::source(&e).map(|s| s.to_string());
    assert_eq!(source.as_deref(), Some("Input/output error (os error 5)"));
    // The next fsync may succeed: later appends are durable, the failed range never is.
    let next = log.append(vec![msg("b")]).unwrap();
    rt.block_on(log.durable(next.end)).unwrap();
    assert!(rt.block_on(log.durable(lost.end)).is_err());
    assert_eq!(offsets(&read_all(&*log)), [0, 1]);
}
