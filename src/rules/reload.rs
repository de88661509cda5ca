//! Reloading: on a change to the rules file or any plugin file it names, on SIGHUP, or on
//! `POST /rules/reload`, a new [`RuleSet`] is read, compiled and `init`ed off the async
//! threads, applied to the broker, then swapped in. A failed reload keeps the old set
//! serving and records why.
//!
//! # Invariants
//! - Reloads run one at a time (`serial`); the version goes up by one per successful reload
//!   and never otherwise.
//! - The set in force is always one that loaded in full: a load error swaps nothing.
//! - `last_error` is set exactly when the latest reload failed; a successful reload moves it
//!   to `previous_error`, with the time it was cleared.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher};
use serde::Serialize;
use tokio::sync::mpsc;

use super::file::{RulesError, RulesSource};
use super::set::{BindingStatus, RuleSet, Rules};
use crate::broker::Broker;
use crate::plugin::PluginHost;

/// How long file events are gathered before one reload: editors and `cp` write in bursts.
const DEBOUNCE: Duration = Duration::from_millis(100);

/// The rules' state, as `/stats` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RulesStatus {
    /// 1 for the first successful load, then one more per successful reload.
    pub version: u64,
    /// When the set in force was loaded, in seconds since the Unix epoch.
    pub loaded_at: u64,
    /// How long loading it took (read, compile, `init`, apply), in milliseconds.
    pub load_ms: u64,
    /// The file the rules are read from.
    pub source: PathBuf,
    /// Successful reloads since start (the first load not counted).
    pub reloads: u64,
    pub failed_reloads: u64,
    /// The latest failed reload, while it is the latest attempt: None once a reload has
    /// succeeded since.
    pub last_error: Option<ReloadFailure>,
    /// The failure a successful reload cleared, kept so that an operator can still see it.
    pub previous_error: Option<ClearedFailure>,
    pub bindings: Vec<BindingStatus>,
}

/// A failed reload: why, and when (seconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReloadFailure {
    pub reason: String,
    pub at: u64,
}

/// A failed reload that a later successful one cleared.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClearedFailure {
    #[serde(flatten)]
    pub failure: ReloadFailure,
    /// When the reload that cleared it succeeded (seconds since the Unix epoch).
    pub cleared_at: u64,
}

/// Loads and reloads the rules, and reports on them. A cheap, cloneable handle.
#[derive(Debug, Clone)]
pub struct Reloader {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    rules: Arc<Rules>,
    host: Arc<PluginHost>,
    source: RulesSource,
    broker: Broker,
    /// Held for the whole of a reload.
    serial: tokio::sync::Mutex<()>,
    record: Mutex<Record>,
}

#[derive(Debug)]
struct Record {
    version: u64,
    loaded_at: u64,
    load_ms: u64,
    reloads: u64,
    failed_reloads: u64,
    last_error: Option<ReloadFailure>,
    previous_error: Option<ClearedFailure>,
}

impl Record {
    /// Counts a successful reload: a failure before it is no longer the latest, and is kept
    /// as the previous one.
    fn succeeded(&mut self, now: u64, load_ms: u64) {
        self.version += 1;
        self.reloads += 1;
        self.loaded_at = now;
        self.load_ms = load_ms;
        if let Some(failure) = self.last_error.take() {
            self.previous_error = Some(ClearedFailure {
                failure,
                cleared_at: now,
            });
        }
    }

    /// Counts a failed reload; the rules in force, and a failure cleared before, stay.
    fn failed(&mut self, reason: String, now: u64) {
        self.failed_reloads += 1;
        self.last_error = Some(ReloadFailure { reason, at: now });
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Reads and builds a set off the async threads.
async fn load(
    host: Arc<PluginHost>,
    source: RulesSource,
    old: Option<Arc<RuleSet>>,
    broker: Option<Broker>,
) -> Result<RuleSet, RulesError> {
    let task = tokio::task::spawn_blocking(move || {
        let spec = source.read()?;
        let (set, report) = RuleSet::build(&host, spec, old.as_deref())?;
        tracing::debug!(
            started = report.started,
            reused = report.reused,
            "rules built"
        );
        if let Some(broker) = broker {
            set.apply(&broker)?;
        }
        Ok(set)
    });
    task.await
        .unwrap_or_else(|e| Err(RulesError::Apply(format!("the loading task failed: {e}"))))
}

impl Reloader {
    /// Loads the rules for the first time (version 1). They are not applied to the broker
    /// yet: install [`rules`](Self::rules) as its hooks, recover it, then call
    /// [`apply`](Self::apply).
    pub async fn start(
        host: Arc<PluginHost>,
        source: RulesSource,
        broker: Broker,
    ) -> Result<Reloader, RulesError> {
        let started = Instant::now();
        let set = load(Arc::clone(&host), source.clone(), None, None).await?;
        tracing::info!(source = %source.path().display(), bindings = set.bindings().count(), "rules loaded");
        let record = Record {
            version: 1,
            loaded_at: unix_now(),
            load_ms: started.elapsed().as_millis() as u64,
            reloads: 0,
            failed_reloads: 0,
            last_error: None,
            previous_error: None,
        };
        Ok(Reloader {
            inner: Arc::new(Inner {
                rules: Arc::new(Rules::new(set)),
                host,
                source,
                broker,
                serial: tokio::sync::Mutex::new(()),
                record: Mutex::new(record),
            }),
        })
    }

    /// The hooks to give the broker.
    pub fn rules(&self) -> Arc<Rules> {
        Arc::clone(&self.inner.rules)
    }

    /// Creates the declared topics and channels of the set in force.
    pub async fn apply(&self) -> Result<(), RulesError> {
        let set = self.inner.rules.current();
        let broker = self.inner.broker.clone();
        tokio::task::spawn_blocking(move || set.apply(&broker))
            .await
            .unwrap_or_else(|e| Err(RulesError::Apply(format!("the apply task failed: {e}"))))
    }

    /// Reads, loads and applies the rules again, and swaps them in. On failure the old set
    /// keeps serving and the reason is returned (and logged, and kept for stats).
    pub async fn reload(&self) -> Result<RulesStatus, String> {
        let inner = &self.inner;
        let _serial = inner.serial.lock().await;
        let started = Instant::now();
        let old = inner.rules.current();
        let loaded = load(
            Arc::clone(&inner.host),
            inner.source.clone(),
            Some(old),
            Some(inner.broker.clone()),
        )
        .await;
        match loaded {
            Ok(set) => {
                inner.rules.swap(Arc::new(set));
                let revoked = inner.broker.recheck_access();
                if revoked > 0 {
                    tracing::info!(
                        revoked,
                        "subscriptions closed: their permission was revoked"
                    );
                }
                let mut record = self.record();
                record.succeeded(unix_now(), started.elapsed().as_millis() as u64);
                tracing::info!(version = record.version, elapsed = ?started.elapsed(), "rules reloaded");
                drop(record);
                Ok(self.status())
            }
            Err(e) => {
                let reason = e.to_string();
                tracing::error!(%reason, "rules reload failed; the previous rules stay in force");
                self.record().failed(reason.clone(), unix_now());
                Err(reason)
            }
        }
    }

    pub fn status(&self) -> RulesStatus {
        let set = self.inner.rules.current();
        let record = self.record();
        RulesStatus {
            version: record.version,
            loaded_at: record.loaded_at,
            load_ms: record.load_ms,
            source: self.inner.source.path().to_owned(),
            reloads: record.reloads,
            failed_reloads: record.failed_reloads,
            last_error: record.last_error.clone(),
            previous_error: record.previous_error.clone(),
            bindings: set.bindings().map(|b| b.status()).collect(),
        }
    }

    fn record(&self) -> MutexGuard<'_, Record> {
        // Every critical section is a few field updates; a panic cannot leave it torn.
        self.inner.record.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The files whose change triggers a reload: the rules source and the current plugins.
    fn watched_files(&self) -> HashSet<PathBuf> {
        let set = self.inner.rules.current();
        std::iter::once(self.inner.source.path().to_owned())
            .chain(set.spec().plugin_files())
            .map(|p| absolute(&p))
            .collect()
    }

    /// Starts watching the files and SIGHUP; the task reloads on either until the broker
    /// shuts down. Call inside the runtime: the signal handler is installed before this
    /// returns.
    pub fn spawn_watch(&self) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use tokio::signal::unix::{signal, SignalKind};
        let hangup = signal(SignalKind::hangup())?;
        let (tx, rx) = mpsc::unbounded_channel();
        let watcher = notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
            // The receiver is gone only once the watch task ended.
            let _ = tx.send(event);
        })
        .map_err(std::io::Error::other)?;
        let mut watch = FileWatch {
            watcher,
            dirs: HashSet::new(),
            files: HashSet::new(),
        };
        watch.update(self.watched_files());
        Ok(tokio::spawn(self.clone().watch(watch, hangup, rx)))
    }

    async fn watch(
        self,
        mut files: FileWatch,
        mut hangup: tokio::signal::unix::Signal,
        mut events: mpsc::UnboundedReceiver<notify::Result<notify::Event>>,
    ) {
        let broker = self.inner.broker.clone();
        loop {
            let why = tokio::select! {
                _ = broker.shutting_down() => return,
                _ = hangup.recv() => "SIGHUP",
                event = events.recv() => {
                    let Some(event) = event else { return };
                    if !files.matters(&event) {
                        continue;
                    }
                    // Gather the rest of the burst, then reload once.
                    tokio::time::sleep(DEBOUNCE).await;
                    while events.try_recv().is_ok() {}
                    "file change"
                }
            };
            tracing::info!(trigger = why, "reloading rules");
            if self.reload().await.is_ok() {
                files.update(self.watched_files());
            }
        }
    }
}

/// The directories watched, for the files that matter in them. Parent directories are
/// watched, not the files, so that a file replaced by rename (as editors and deploy tools
/// do) is still seen.
struct FileWatch {
    watcher: RecommendedWatcher,
    dirs: HashSet<PathBuf>,
    files: HashSet<PathBuf>,
}

impl FileWatch {
    fn update(&mut self, files: HashSet<PathBuf>) {
        let dirs: HashSet<PathBuf> = files
            .iter()
            .filter_map(|f| f.parent().map(Path::to_owned))
            .collect();
        for gone in self.dirs.difference(&dirs) {
            let _ = self.watcher.unwatch(gone);
        }
        for dir in dirs.difference(&self.dirs) {
            if let Err(error) = self.watcher.watch(dir, RecursiveMode::NonRecursive) {
                tracing::warn!(dir = %dir.display(), %error, "cannot watch for rules changes");
            }
        }
        self.dirs = dirs;
        self.files = files;
    }

    /// True for an event that may change a watched file's content. Opens and reads (the
    /// reload's own among them) and metadata changes are not.
    fn matters(&self, event: &notify::Result<notify::Event>) -> bool {
        use notify::event::{AccessKind, AccessMode, ModifyKind};
        let Ok(event) = event else { return true };
        let changes = match event.kind {
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
            EventKind::Access(_) | EventKind::Modify(ModifyKind::Metadata(_)) => false,
            _ => true,
        };
        changes && event.paths.iter().any(|p| self.files.contains(p))
    }
}

/// `path` made absolute against the working directory, as the watcher reports paths.
fn absolute(path: &Path) -> PathBuf {
    std::path::absolute(path).unwrap_or_else(|_| path.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            version: 1,
            loaded_at: 0,
            load_ms: 0,
            reloads: 0,
            failed_reloads: 0,
            last_error: None,
            previous_error: None,
        }
    }

    #[test]
    fn a_successful_reload_clears_the_last_error_and_keeps_it_as_previous() {
        let mut record = record();
        record.failed("bad params".into(), 10);
        record.failed("still bad".into(), 20);
        assert_eq!(record.last_error.as_ref().unwrap().reason, "still bad");
        assert_eq!(record.previous_error, None);

        record.succeeded(30, 5);
        assert_eq!(record.last_error, None);
        let previous = record.previous_error.clone().unwrap();
        assert_eq!(previous.failure.reason, "still bad");
        assert_eq!((previous.failure.at, previous.cleared_at), (20, 30));
        assert_eq!(
            (record.version, record.reloads, record.failed_reloads),
            (2, 1, 2)
        );

        // A success with no failure before it keeps the previous failure as it was.
        record.succeeded(40, 5);
        assert_eq!(record.previous_error, Some(previous.clone()));
        // A new failure is the last error again; the cleared one stays previous.
        record.failed("broken again".into(), 50);
        assert_eq!(record.last_error.as_ref().unwrap().at, 50);
        assert_eq!(record.previous_error, Some(previous));
    }
}
