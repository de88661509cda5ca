//! Threads of their own for plugin calls, so that no router, filter or sampler ever runs on
//! an async worker.
//!
//! Each router and each channel's chain of filters and samplers has a [`Lane`]: a queue of
//! jobs run one at a time, in order. The pool's threads take lanes that have work from one
//! ready queue, run a few of a lane's jobs, and put the lane back at the end of the queue if
//! it has more. So a slow or spinning plugin holds at most one thread, and delays only the
//! jobs of its own lane: the topic or channel it is bound to.
//!
//! # Invariants
//! - A lane is in the ready queue, or being run by one thread, exactly when `scheduled` is
//!   set; its jobs never run on two threads at once, and run in submission order.
//! - A job that panics is caught; its caller sees [`PoolClosed`] as for a job never run.
//! - Threads start on the first job, so a broker without plugins has none, and end when the
//!   pool is dropped; jobs still queued then are dropped, and their callers see
//!   [`PoolClosed`].

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};

use tokio::sync::oneshot;

/// Jobs of one lane run before the lane goes back to the end of the ready queue.
const SLICE: usize = 8;

type Job = Box<dyn FnOnce() + Send>;

/// The pool was dropped (the broker is shutting down), or the job panicked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the plugin pool stopped before the call finished")]
pub struct PoolClosed;

/// The plugin threads. Dropping it stops them once their current jobs end.
#[derive(Debug)]
pub struct PluginPool {
    threads: usize,
    inner: Arc<Inner>,
    started: OnceLock<()>,
}

#[derive(Debug, Default)]
struct Inner {
    ready: Mutex<Ready>,
    wake: Condvar,
    /// Set once, when the pool is dropped; read before each job.
    closed: AtomicBool,
}

#[derive(Default)]
struct Ready {
    lanes: VecDeque<Arc<Lane>>,
    closed: bool,
}

impl std::fmt::Debug for Ready {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ready")
            .field("lanes", &self.lanes.len())
            .field("closed", &self.closed)
            .finish()
    }
}

/// The jobs of one router or gate, run one at a time in order.
#[derive(Default)]
pub struct Lane {
    jobs: Mutex<Jobs>,
}

#[derive(Default)]
struct Jobs {
    queue: VecDeque<Job>,
    scheduled: bool,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let jobs = self.jobs();
        f.debug_struct("Lane")
            .field("queued", &jobs.queue.len())
            .field("scheduled", &jobs.scheduled)
            .finish()
    }
}

impl Lane {
    pub fn new() -> Arc<Lane> {
        Arc::new(Lane::default())
    }

    /// Jobs waiting to run (not counting one running now).
    pub fn queued(&self) -> usize {
        self.jobs().queue.len()
    }

    fn jobs(&self) -> MutexGuard<'_, Jobs> {
        // Critical sections are single queue operations; a job never runs under this lock.
        self.jobs.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl PluginPool {
    /// A pool of `threads` threads (at least one), started on its first job.
    pub fn new(threads: usize) -> PluginPool {
        PluginPool {
            threads: threads.max(1),
            inner: Arc::default(),
            started: OnceLock::new(),
        }
    }

    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Queues `job` on `lane` now, after the lane's earlier jobs, to run on a pool thread;
    /// the future resolves with its result.
    pub fn run<T: Send + 'static>(
        &self,
        lane: &Arc<Lane>,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> impl std::future::Future<Output = Result<T, PoolClosed>> + Send + 'static {
        let (tx, rx) = oneshot::channel();
        self.submit(
            lane,
            Box::new(move || {
                let _ = tx.send(job());
            }),
        );
        async move { rx.await.map_err(|_| PoolClosed) }
    }

    fn submit(&self, lane: &Arc<Lane>, job: Job) {
        self.started.get_or_init(|| self.start());
        let schedule = {
            let mut jobs = lane.jobs();
            jobs.queue.push_back(job);
            !std::mem::replace(&mut jobs.scheduled, true)
        };
        if schedule {
            let mut ready = self.inner.ready();
            ready.lanes.push_back(Arc::clone(lane));
            drop(ready);
            self.inner.wake.notify_one();
        }
    }

    fn start(&self) {
        for i in 0..self.threads {
            let inner = Arc::clone(&self.inner);
            let spawned = std::thread::Builder::new()
                .name(format!("quiver-plugin-{i}"))
                .spawn(move || inner.work());
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a plugin thread");
            }
        }
    }
}

impl Drop for PluginPool {
    fn drop(&mut self) {
        self.inner.closed.store(true, Ordering::SeqCst);
        let mut ready = self.inner.ready();
        ready.closed = true;
        ready.lanes.clear();
        drop(ready);
        self.inner.wake.notify_all();
    }
}

impl Inner {
    fn ready(&self) -> MutexGuard<'_, Ready> {
        // Critical sections are single queue operations.
        self.ready.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn work(&self) {
        loop {
            let lane = {
                let mut ready = self.ready();
                loop {
                    if ready.closed {
                        return;
                    }
                    if let Some(lane) = ready.lanes.pop_front() {
                        break lane;
                    }
                    ready = self.wake.wait(ready).unwrap_or_else(|e| e.into_inner());
                }
            };
            if self.run_slice(&lane) {
                let mut ready = self.ready();
                if ready.closed {
                    return;
                }
                ready.lanes.push_back(lane);
                drop(ready);
                self.wake.notify_one();
            }
        }
    }

    /// Runs up to [`SLICE`] of the lane's jobs; true if it has more.
    fn run_slice(&self, lane: &Lane) -> bool {
        for _ in 0..SLICE {
            let job = {
                let mut jobs = lane.jobs();
                if self.closed.load(Ordering::SeqCst) {
                    // Dropped here, outside any job: their callers see `PoolClosed`.
                    jobs.queue.clear();
                }
                match jobs.queue.pop_front() {
                    Some(job) => job,
                    None => {
                        jobs.scheduled = false;
                        return false;
                    }
                }
            };
            if catch_unwind(AssertUnwindSafe(job)).is_err() {
                tracing::error!("a plugin job panicked; its caller gets an error");
            }
        }
        let mut jobs = lane.jobs();
        if jobs.queue.is_empty() {
            jobs.scheduled = false;
            return false;
        }
        true
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::sync::mpsc;
    use std::time::Duration;

    #[tokio::test]
    async fn jobs_of_a_lane_run_in_order() {
        let pool = PluginPool::new(2);
        let lane = Lane::new();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let runs: Vec<_> = (0..100)
            .map(|i| {
                let seen = Arc::clone(&seen);
                pool.run(&lane, move || seen.lock().unwrap().push(i))
            })
            .collect();
        for run in runs {
            run.await.unwrap();
        }
        assert_eq!(*seen.lock().unwrap(), (0..100).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_stuck_lane_holds_one_thread_and_others_still_run() {
        let pool = PluginPool::new(2);
        let (stuck, slow) = (Lane::new(), Lane::new());
        let (release, held) = mpsc::channel::<()>();
        let (started, running) = mpsc::channel::<()>();
        let blocked = pool.run(&stuck, move || {
            started.send(()).unwrap();
            held.recv().unwrap();
        });
        let blocked = tokio::spawn(blocked);
        running.recv().unwrap();
        // A second job on the stuck lane waits behind the first, not on another thread.
        let concurrent = Arc::new(AtomicUsize::new(0));
        let c = Arc::clone(&concurrent);
        let second = tokio::spawn(pool.run(&stuck, move || c.fetch_add(1, Ordering::SeqCst)));
        for i in 0..50 {
            assert_eq!(pool.run(&slow, move || i * 2).await.unwrap(), i * 2);
        }
        assert_eq!(concurrent.load(Ordering::SeqCst), 0);
        release.send(()).unwrap();
        blocked.await.unwrap().unwrap();
        second.await.unwrap().unwrap();
        assert_eq!(concurrent.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_panicking_job_is_an_error_and_the_lane_goes_on() {
        let pool = PluginPool::new(1);
        let lane = Lane::new();
        let failed = pool.run(&lane, || -> u32 { panic!("guest bug") }).await;
        assert_eq!(failed, Err(PoolClosed));
        assert_eq!(pool.run(&lane, || 7).await, Ok(7));
    }

    #[tokio::test]
    async fn dropping_the_pool_fails_queued_jobs() {
        let pool = PluginPool::new(1);
        let lane = Lane::new();
        let (release, held) = mpsc::channel::<()>();
        let (started, running) = mpsc::channel::<()>();
        let first = tokio::spawn(pool.run(&lane, move || {
            started.send(()).unwrap();
            let _ = held.recv_timeout(Duration::from_secs(30));
        }));
        running.recv().unwrap();
        let queued = tokio::spawn(pool.run(&lane, || 1));
        assert_eq!(lane.queued(), 1);
        drop(pool);
        release.send(()).unwrap();
        first.await.unwrap().unwrap();
        assert_eq!(queued.await.unwrap(), Err(PoolClosed));
    }
}
