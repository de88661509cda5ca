//! Small per-topic files: `meta.json` (replaced atomically) and the `clean` marker.

use std::fs::File;
use std::io::{self, Write};
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::storage::TopicMeta;

pub(super) const META_FILE: &str = "meta.json";
const META_TMP: &str = "meta.json.tmp";
pub(super) const CLEAN_FILE: &str = "clean";

/// `meta.json`: the broker's [`TopicMeta`] (absent until it is first saved) and the log's
/// logical start.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct MetaFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) incarnation: Option<u64>,
    #[serde(default)]
    pub(super) paused: bool,
    #[serde(default)]
    pub(super) start: u64,
}

impl MetaFile {
    pub(super) fn topic_meta(&self) -> Option<TopicMeta> {
        Some(TopicMeta {
            incarnation: self.incarnation?,
            paused: self.paused,
        })
    }

    /// Reads `dir/meta.json`; None when there is none.
    pub(super) fn read(dir: &Path) -> io::Result<Option<MetaFile>> {
        let bytes = match std::fs::read(dir.join(META_FILE)) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
    }

    /// Replaces `dir/meta.json` atomically: a crash leaves the old file or the new one.
    pub(super) fn write(&self, dir: &Path) -> io::Result<()> {
        let json = serde_json::to_vec(self).map_err(io::Error::other)?;
        let tmp = dir.join(META_TMP);
        let mut file = File::create(&tmp)?;
        file.write_all(&json)?;
        file.sync_all()?;
        std::fs::rename(&tmp, dir.join(META_FILE))?;
        sync_dir(dir)
    }
}

/// fsyncs a directory, so that files created, renamed or removed in it stay so.
pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The clean marker: the active segment's base and length at a clean shutdown, with a CRC.
/// If both still match on open, every index file is trusted and nothing is scanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CleanMarker {
    pub(super) active_base: u64,
    pub(super) active_len: u64,
}

impl CleanMarker {
    pub(super) fn write(&self, dir: &Path) -> io::Result<()> {
        let mut buf = Vec::with_capacity(20);
        buf.extend_from_slice(&self.active_base.to_le_bytes());
        buf.extend_from_slice(&self.active_len.to_le_bytes());
        let crc = crc32c::crc32c(&buf);
        buf.extend_from_slice(&crc.to_le_bytes());
        let mut file = File::create(dir.join(CLEAN_FILE))?;
        file.write_all(&buf)?;
        file.sync_all()?;
        sync_dir(dir)
    }

    /// Reads and removes the marker, so that a crash after this open is seen as unclean.
    pub(super) fn take(dir: &Path) -> io::Result<Option<CleanMarker>> {
        let path = dir.join(CLEAN_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        std::fs::remove_file(&path)?;
        if bytes.len() != 20 {
            return Ok(None);
        }
        let (body, crc) = bytes.split_at(16);
        if crc32c::crc32c(body).to_le_bytes() != crc {
            return Ok(None);
        }
        let u64_at = |i: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&body[i..i + 8]);
            u64::from_le_bytes(b)
        };
        Ok(Some(CleanMarker {
            active_base: u64_at(0),
            active_len: u64_at(8),
        }))
    }
}

/// Removes a leftover `meta.json.tmp` from a crash during a meta write.
pub(super) fn remove_tmp(dir: &Path) {
    let _ = std::fs::remove_file(dir.join(META_TMP));
}
