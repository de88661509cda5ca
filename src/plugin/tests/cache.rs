//! The compile cache makes a second load fast, and a bad cache file only costs a recompile.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ring::digest::{digest, SHA256};

use super::{guest, params, TestMessage};
use crate::plugin::{PluginHost, PluginKind, PluginLimits};

fn cached_host(dir: &Path) -> PluginHost {
    PluginHost::new(PluginLimits::default(), Some(dir.to_owned())).unwrap()
}

/// Loads the tag filter with a fresh host on `dir`, checks it works, and says how long the
/// load took.
fn timed_load(dir: &Path) -> Duration {
    let host = cached_host(dir);
    let started = Instant::now();
    let plugin = host.load(&guest("tag_filter"), PluginKind::Filter).unwrap();
    let elapsed = started.elapsed();
    let mut filter = host
        .instantiate(&plugin, &params(&[("expr", "exists(a)")]))
        .unwrap();
    let msg = TestMessage::new(b"").header("a", "1");
    assert!(filter.keep(&msg.view()).unwrap());
    elapsed
}

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    files
}

#[test]
fn second_load_comes_from_the_cache_and_is_fast() {
    let dir = tempfile::tempdir().unwrap();

    let compiled = timed_load(dir.path());
    let files = cache_files(dir.path());
    let cached = timed_load(dir.path());

    assert_eq!(files.len(), 1, "one compile cached: {files:?}");
    assert!(files[0].extension().is_some_and(|e| e == "cwasm"));
    assert!(
        cached * 5 < compiled,
        "cached load {cached:?} vs compile {compiled:?}"
    );
    assert_eq!(cache_files(dir.path()), files, "nothing new written");
}

#[test]
fn corrupt_cache_file_is_ignored_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    timed_load(dir.path());
    let [file] = &cache_files(dir.path())[..] else {
        panic!("expected one cache file");
    };
    let good = std::fs::read(file).unwrap();

    // A flipped byte in the compiled code: caught by the digest.
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x40;
    std::fs::write(file, &flipped).unwrap();
    timed_load(dir.path());
    assert_eq!(std::fs::read(file).unwrap(), good, "rewritten");

    // A file whose digest matches a payload that is not a compile: refused by wasmtime.
    let payload = b"not a compiled component";
    let mut forged = b"QVPLUG01".to_vec();
    forged.extend_from_slice(digest(&SHA256, payload).as_ref());
    forged.extend_from_slice(payload);
    std::fs::write(file, &forged).unwrap();
    timed_load(dir.path());
    assert_eq!(std::fs::read(file).unwrap(), good, "rewritten");

    // An empty file.
    std::fs::write(file, b"").unwrap();
    timed_load(dir.path());
    assert_eq!(std::fs::read(file).unwrap(), good, "rewritten");
}

#[test]
fn cache_directory_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let nested = dir.path().join("a/b/plugins");
    timed_load(&nested);
    assert_eq!(cache_files(&nested).len(), 1);
}
