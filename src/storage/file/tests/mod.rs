//! Tests of the file log on real files in temporary directories.

mod corruption;
mod durability;
mod perf;
mod property;
mod retention;
mod storage;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;

use super::log::FileLog;
use super::FileStorage;
use crate::message::{Headers, StoredMessage, TopicName};
use crate::storage::{FsyncPolicy, Storage, StorageConfig, TopicLog};

fn config(segment_bytes: u64) -> StorageConfig {
    StorageConfig {
        segment_bytes,
        ..StorageConfig::default()
    }
}

fn with_fsync(mut config: StorageConfig, fsync: FsyncPolicy) -> StorageConfig {
    config.fsync = fsync;
    config
}

fn topic(name: &str) -> TopicName {
    TopicName::new(name).unwrap()
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

/// A message with body `body`, stamped now.
fn msg(body: &str) -> StoredMessage {
    StoredMessage {
        timestamp_ns: now_ns(),
        deliver_at_ms: 0,
        headers: Headers::new(),
        body: Bytes::copy_from_slice(body.as_bytes()),
        route: None,
    }
}

/// A ~100-byte message numbered `i`.
fn numbered(i: u64) -> StoredMessage {
    msg(&format!("{i:0>100}"))
}

fn open(dir: &Path, config: StorageConfig) -> FileStorage {
    FileStorage::open(dir, config).unwrap()
}

/// The topic's log as its concrete type.
fn file_log(storage: &FileStorage, name: &str) -> Arc<FileLog> {
    storage.open_topic(&topic(name)).unwrap();
    storage.file_log(&topic(name)).unwrap()
}

fn read_all(log: &dyn TopicLog) -> Vec<(u64, Arc<StoredMessage>)> {
    let mut out = Vec::new();
    log.read(0, usize::MAX / 2, &mut out);
    out
}

fn offsets(messages: &[(u64, Arc<StoredMessage>)]) -> Vec<u64> {
    messages.iter().map(|(o, _)| *o).collect()
}

fn topic_dir(dir: &Path, name: &str) -> PathBuf {
    dir.join("topics").join(name)
}

/// The segment files of a topic, in offset order.
fn segment_files(dir: &Path, name: &str) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(topic_dir(dir, name))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    files.sort();
    files
}

/// Start positions of the records of a segment file, found by walking the length fields.
fn record_positions(path: &Path) -> Vec<u64> {
    let bytes = std::fs::read(path).unwrap();
    let mut positions = Vec::new();
    let mut pos = 8;
    while pos + 8 <= bytes.len() {
        positions.push(pos as u64);
        let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
        pos += 8 + len;
    }
    positions
}

/// XORs one byte of a file.
fn flip(path: &Path, position: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[position as usize] ^= 0x5a;
    std::fs::write(path, bytes).unwrap();
}
