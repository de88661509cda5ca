//! The on-disk compile cache: `Component::serialize` output, so that loading a plugin again
//! (another binding, a reload, a restart) deserializes in well under a millisecond instead of
//! compiling for 35–100 ms.
//!
//! # Invariants
//! - A file's name is the SHA-256 of the engine's compatibility fingerprint (wasmtime's
//!   version, target, compiler flags and tunables) and of the component's bytes: a file is
//!   only ever looked up by an engine that would compile the same code from the same source.
//! - A file holds a magic tag, the SHA-256 of its payload, then the payload. It is written to
//!   a temporary name and renamed, so readers see a whole file or none; the digest catches
//!   anything else (a torn copy, bit rot). A file that fails any check is ignored and
//!   rewritten: the cache can slow a load down, never fail it.

use std::fs;
use std::hash::{Hash, Hasher};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use ring::digest::{self, Context, SHA256};
use wasmtime::component::Component;
use wasmtime::Engine;

use super::error::{detail, PluginError};

const MAGIC: &[u8; 8] = b"QVPLUG01";
const DIGEST_LEN: usize = 32;
/// Distinguishes this cache's keys from any other use of the same hashes.
const KEY_DOMAIN: &[u8] = b"quiver plugin compile cache v1\0";

/// A directory of compiled components, keyed by source and engine.
#[derive(Debug)]
pub(super) struct CompileCache {
    dir: PathBuf,
    /// SHA-256 of the engine's `precompile_compatibility_hash`.
    engine: [u8; DIGEST_LEN],
}

impl CompileCache {
    /// Opens (creating it if needed) the cache directory `dir` for `engine`'s compiles.
    pub(super) fn open(dir: PathBuf, engine: &Engine) -> Result<Self, PluginError> {
        fs::create_dir_all(&dir).map_err(|source| PluginError::Cache {
            path: dir.clone(),
            source,
        })?;
        let mut hasher = DigestHasher(Context::new(&SHA256));
        engine.precompile_compatibility_hash().hash(&mut hasher);
        let engine = to_array(hasher.0.finish().as_ref());
        Ok(CompileCache { dir, engine })
    }

    /// The cache file for a component whose bytes hash to `source_hash`.
    pub(super) fn path_for(&self, source_hash: &[u8]) -> PathBuf {
        let mut key = Context::new(&SHA256);
        key.update(KEY_DOMAIN);
        key.update(&self.engine);
        key.update(source_hash);
        self.dir
            .join(format!("{}.cwasm", hex(key.finish().as_ref())))
    }

    /// The cached compile at `path`, or `None` (after logging why) if it is missing or fails
    /// a check.
    pub(super) fn load(&self, engine: &Engine, path: &Path) -> Option<Component> {
        let file = match fs::read(path) {
            Ok(file) => file,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return None,
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot read cached plugin compile; recompiling");
                return None;
            }
        };
        let Some(payload) = verified_payload(&file) else {
            tracing::warn!(path = %path.display(), "cached plugin compile is corrupt; recompiling");
            return None;
        };
        // SAFETY: `payload` is the `Component::serialize` output we wrote into our own cache
        // directory, under a name derived from this engine's compatibility fingerprint and
        // the source's SHA-256, and its own SHA-256 matched just above. Wasmtime checks the
        // version and configuration in its header again.
        #[allow(unsafe_code)]
        let component = unsafe { Component::deserialize(engine, payload) };
        match component {
            Ok(component) => Some(component),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %detail(&err), "cached plugin compile does not load; recompiling");
                None
            }
        }
    }

    /// Writes `component`'s compile to `path`, atomically. Failures are logged: the next load
    /// compiles again.
    pub(super) fn store(&self, component: &Component, path: &Path) {
        let payload = match component.serialize() {
            Ok(payload) => payload,
            Err(err) => {
                tracing::warn!(error = %detail(&err), "cannot serialize plugin compile; not cached");
                return;
            }
        };
        if let Err(err) = write_atomically(path, &payload) {
            tracing::warn!(path = %path.display(), error = %err, "cannot write plugin compile cache");
        }
    }
}

/// The payload of a cache file, if its tag and digest check out.
fn verified_payload(file: &[u8]) -> Option<&[u8]> {
    let rest = file.strip_prefix(MAGIC)?;
    let (expected, payload) = rest.split_at_checked(DIGEST_LEN)?;
    let actual = digest::digest(&SHA256, payload);
    (actual.as_ref() == expected).then_some(payload)
}

fn write_atomically(path: &Path, payload: &[u8]) -> io::Result<()> {
    static UNIQUE: AtomicU64 = AtomicU64::new(0);
    let unique = UNIQUE.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_extension(format!("{}.{unique}.tmp", std::process::id()));
    let mut file = Vec::with_capacity(MAGIC.len() + DIGEST_LEN + payload.len());
    file.extend_from_slice(MAGIC);
    file.extend_from_slice(digest::digest(&SHA256, payload).as_ref());
    file.extend_from_slice(payload);
    fs::write(&tmp, &file)?;
    fs::rename(&tmp, path).inspect_err(|_| {
        let _ = fs::remove_file(&tmp);
    })
}

/// SHA-256 of `bytes`.
pub(super) fn sha256(bytes: &[u8]) -> [u8; DIGEST_LEN] {
    to_array(digest::digest(&SHA256, bytes).as_ref())
}

fn to_array(digest: &[u8]) -> [u8; DIGEST_LEN] {
    let mut out = [0u8; DIGEST_LEN];
    out.copy_from_slice(&digest[..DIGEST_LEN]);
    out
}

/// Lowercase hex.
pub(super) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(2 * bytes.len()), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// Feeds a `Hash` value's bytes into a SHA-256, to fingerprint the engine's configuration.
struct DigestHasher(Context);

impl Hasher for DigestHasher {
    fn write(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    fn finish(&self) -> u64 {
        // Unused: the digest is taken from the context.
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_is_checked_against_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.cwasm");
        write_atomically(&path, b"compiled code").unwrap();
        let mut file = fs::read(&path).unwrap();
        assert_eq!(verified_payload(&file), Some(&b"compiled code"[..]));
        let last = file.len() - 1;
        file[last] ^= 1;
        assert_eq!(verified_payload(&file), None);
        assert_eq!(verified_payload(b"QVPLUG01short"), None);
        assert_eq!(verified_payload(b""), None);
        let leftovers = fs::read_dir(dir.path()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary file is left behind");
    }

    #[test]
    fn hex_is_lowercase_and_padded() {
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
    }
}
