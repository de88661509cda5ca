//! `quiver bench`: a load generator. Consumers subscribe first, then producers publish
//! fixed-size messages (MPUB batches, or PUB) as fast as the broker confirms them or at a
//! capped rate; consumers FIN every message and record publish→deliver latency from the send
//! timestamp carried in the first bytes of each body.
//!
//! Without `--addr` the bench starts its own broker (`quiver serve`) as a child process on
//! loopback with a temporary data directory, and reports that process's peak RSS.
//!
//! Every message body starts with a 16-byte header: the send time in nanoseconds since the
//! Unix epoch (u64, little-endian), then a tag (u64, little-endian) holding the producer's
//! index in the top 16 bits and its message sequence number in the low 48.

mod child;
mod consumer;
mod nsq;
mod producer;
mod report;

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientError, ClientOptions, SubscribeOptions};
use crate::message::{ChannelName, Headers, InvalidInput, TopicName, MAX_BODY_LEN};
use crate::protocol::MAX_FRAME_LEN;
use crate::transport::tls::{parse_fingerprint, TlsError, Trust};

pub use report::{BenchReport, LatencyUs};

/// Bytes at the start of every body: send timestamp (ns) and producer tag.
pub const HEADER_LEN: usize = 16;
/// Messages published when neither `--count` nor `--duration` is given.
pub const DEFAULT_COUNT: u64 = 1_000_000;
/// How long consumers may lag behind once publishing has finished.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// Generous per-message MPUB framing overhead, used only to refuse batches that could not fit
/// in one frame.
const MPUB_OVERHEAD_PER_MESSAGE: usize = 64;

/// Options of `quiver bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Broker to load; without it, bench starts its own `quiver serve` child process on
    /// loopback with a temp data dir and reports its peak RSS.
    #[arg(long)]
    pub addr: Option<SocketAddr>,
    /// With --addr: trust this CA (or self-signed certificate) file.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// With --addr: trust exactly the certificate with this SHA-256 fingerprint.
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// With --addr: skip certificate verification. Development only.
    #[arg(long)]
    pub insecure: bool,
    /// Producer connections.
    #[arg(long, default_value_t = 1)]
    pub producers: usize,
    /// Consumer connections (0: publish only).
    #[arg(long, default_value_t = 1)]
    pub consumers: usize,
    /// Message body bytes (at least 16: the first 16 carry a send timestamp and a sequence).
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// Total messages [default: 1000000 unless --duration].
    #[arg(long)]
    pub count: Option<u64>,
    /// Publish for this long, e.g. 10s.
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub duration: Option<Duration>,
    /// Messages per MPUB; 1 publishes with PUB.
    #[arg(long, default_value_t = 200)]
    pub batch: usize,
    /// Messages in flight to each consumer.
    #[arg(long, default_value_t = 2500)]
    pub rdy: u32,
    /// Outstanding publish requests per producer.
    #[arg(long, default_value_t = 8)]
    pub pipeline: usize,
    /// Cap on the total publish rate, in messages per second.
    #[arg(long)]
    pub rate: Option<u64>,
    #[arg(long, default_value = "bench")]
    pub topic: String,
    #[arg(long, default_value = "bench")]
    pub channel: String,
    /// Print the report as one JSON object.
    #[arg(long)]
    pub json: bool,
    /// No progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// The executable to start as the broker instead of this one (for tests).
    #[arg(long, hide = true)]
    pub broker_exe: Option<PathBuf>,
    /// fsync policy of the broker the bench starts (always, interval:DURATION, never). Ignored
    /// with --addr.
    #[arg(long)]
    pub fsync: Option<crate::storage::FsyncPolicy>,
    /// Rules file for the broker the bench starts (routers, filters, samplers on the bench
    /// topic and channel; grants). Ignored with --addr.
    #[arg(long)]
    pub rules: Option<PathBuf>,
    /// Config file for the broker the bench starts (for example `[auth]` tokens). Ignored
    /// with --addr.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Token the bench's QUIC clients authenticate with (AUTH after connecting).
    #[arg(long, env = "QUIVER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A header every message carries, as NAME=VALUE; repeatable. For benchmarking filters.
    #[arg(long = "header", value_name = "NAME=VALUE")]
    pub headers: Vec<String>,
    /// Load the broker through its NSQ TCP listener (MPUB, SUB, RDY, FIN) instead of QUIC.
    /// With --addr, that is the NSQ TCP address.
    #[arg(long)]
    pub nsq: bool,
    /// Give every message a unique message id (header quiver-msg-id), so that the topic's
    /// dedup window checks and records each one.
    #[arg(long)]
    pub msg_ids: bool,
    /// Give messages order keys (header quiver-order-key) round-robin over this many keys,
    /// for ordered channels (`ordering = "key"` in a --rules file).
    #[arg(long, value_name = "N")]
    pub keys: Option<u32>,
}

impl Default for BenchArgs {
    /// The same defaults as the command line.
    fn default() -> Self {
        BenchArgs {
            addr: None,
            ca: None,
            fingerprint: None,
            insecure: false,
            producers: 1,
            consumers: 1,
            size: 100,
            count: None,
            duration: None,
            batch: 200,
            rdy: 2500,
            pipeline: 8,
            rate: None,
            topic: "bench".into(),
            channel: "bench".into(),
            json: false,
            no_progress: false,
            broker_exe: None,
            fsync: None,
            rules: None,
            config: None,
            token: None,
            headers: Vec::new(),
            nsq: false,
            msg_ids: false,
            keys: None,
        }
    }
}

/// Why the bench could not run. Publish errors and missing deliveries are not errors: they
/// are counted in the report.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("--{flag}: {why}")]
    InvalidArg { flag: &'static str, why: String },
    #[error("--{flag}")]
    InvalidName {
        flag: &'static str,
        #[source]
        source: InvalidInput,
    },
    #[error("--fingerprint")]
    Fingerprint(#[source] TlsError),
    #[error(
        "no way to trust the broker at {addr}: pass --ca FILE, --fingerprint SHA256 or --insecure"
    )]
    NoTrust { addr: SocketAddr },
    #[error("finding the quiver executable to start a broker (pass --addr to use a running one)")]
    CurrentExe(#[source] std::io::Error),
    #[error("creating the broker's temporary data directory {path}")]
    TempDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("starting the broker {exe}")]
    Spawn {
        exe: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the broker did not start: {why}{}", child::stderr_section(.stderr))]
    BrokerStartup { why: String, stderr: String },
    #[error("{role} {index}: connecting to {addr}")]
    Connect {
        role: &'static str,
        index: usize,
        addr: SocketAddr,
        #[source]
        source: Box<ClientError>,
    },
    #[error("producer {index}: opening the publish stream")]
    OpenProducer {
        index: usize,
        #[source]
        source: Box<ClientError>,
    },
    #[error("consumer {index}: subscribing to {topic}/{channel}")]
    Subscribe {
        index: usize,
        topic: String,
        channel: String,
        #[source]
        source: Box<ClientError>,
    },
    #[error("a bench task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error("NSQ {role} {index}")]
    Nsq {
        role: &'static str,
        index: usize,
        #[source]
        source: std::io::Error,
    },
}

/// Counters shared by every producer, consumer and the coordinator.
#[derive(Debug)]
struct Shared {
    /// Messages the broker confirmed.
    published: AtomicU64,
    /// Messages whose publish failed.
    publish_errors: AtomicU64,
    /// Messages delivered to (and FIN'd by) any consumer.
    consumed: AtomicU64,
    /// Once publishing is done: the number of messages consumers must reach. `u64::MAX` until then.
    target: AtomicU64,
    /// Consumers still reading.
    live_consumers: AtomicUsize,
    /// Send → PUB-OK of each publish request, in microseconds.
    publish_latency: std::sync::Mutex<hdrhistogram::Histogram<u64>>,
    /// Poked when `consumed` reaches `target`, or a consumer stops.
    wake: Notify,
}

impl Shared {
    /// After publishing `published` messages: waits until the consumers have them all, every
    /// consumer stopped, or [`DRAIN_TIMEOUT`] passed since `publish_end` (then warns).
    async fn drain(&self, published: u64, publish_end: Instant) {
        self.target.store(published, Ordering::Release);
        let drain_until = publish_end + DRAIN_TIMEOUT;
        loop {
            let consumed = self.consumed.load(Ordering::Acquire);
            if consumed >= published || self.live_consumers.load(Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(drain_until, self.wake.notified())
                .await
                .is_err()
            {
                tracing::warn!(
                    missing = published - consumed,
                    timeout = ?DRAIN_TIMEOUT,
                    "consumers did not receive every published message in time"
                );
                return;
            }
        }
    }
}

/// Waits for every consumer: their latencies together, and the last delivery any saw.
async fn gather(
    consumers: &mut JoinSet<consumer::Finished>,
) -> Result<(hdrhistogram::Histogram<u64>, Option<Instant>), BenchError> {
    let mut latency = consumer::new_histogram();
    let mut consume_end = None::<Instant>;
    while let Some(done) = consumers.join_next().await {
        let finished = done?;
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = latency.add(&finished.latency);
        consume_end = consume_end.max(finished.last_message);
    }
    Ok((latency, consume_end))
}

/// Runs the benchmark described by `args`.
pub async fn run(args: BenchArgs) -> Result<BenchReport, BenchError> {
    let plan = Plan::new(&args)?;
    let mut broker = None;
    let target = match args.addr {
        Some(addr) if args.nsq => Target::Nsq(addr),
        Some(addr) => Target::Quic(addr, external_trust(&args, addr)?),
        None => {
            let exe = match &args.broker_exe {
                Some(exe) => exe.clone(),
                None => std::env::current_exe().map_err(BenchError::CurrentExe)?,
            };
            let mut extra = Vec::new();
            if let Some(fsync) = args.fsync {
                extra.extend(["--fsync".to_string(), fsync.to_string()]);
            }
            if let Some(rules) = &args.rules {
                extra.extend(["--rules".to_string(), rules.display().to_string()]);
            }
            if let Some(config) = &args.config {
                extra.extend(["--config".to_string(), config.display().to_string()]);
            }
            let child = child::ChildBroker::start(&exe, &extra).await?;
            let target = match (args.nsq, child.nsq_addr()) {
                (false, _) => {
                    Target::Quic(child.addr(), Trust::CaFile(child.cert_path().to_owned()))
                }
                (true, Some(addr)) => Target::Nsq(addr),
                (true, None) => {
                    return Err(BenchError::BrokerStartup {
                        why: "it printed no `NSQ TCP <address>` line".into(),
                        stderr: String::new(),
                    })
                }
            };
            broker = Some(child);
            target
        }
    };
    let result = match target {
        Target::Quic(addr, trust) => {
            let mut options = ClientOptions::new(addr, trust);
            options.token = args.token.clone();
            load(&args, &plan, &options).await
        }
        Target::Nsq(addr) => nsq::load(&args, &plan, addr).await,
    };
    let peak_rss = broker.as_ref().and_then(|b| b.peak_rss_bytes());
    if let Some(broker) = broker {
        broker.stop().await;
    }
    let outcome = result?;
    Ok(BenchReport::new(&args, outcome, peak_rss))
}

/// Where the load goes.
#[derive(Debug)]
enum Target {
    Quic(SocketAddr, Trust),
    Nsq(SocketAddr),
}

/// Validated arguments.
#[derive(Debug)]
struct Plan {
    topic: TopicName,
    channel: ChannelName,
    /// Total messages, or `None` to publish until the deadline.
    count: Option<u64>,
    /// Seconds between two batches of one producer, with `--rate`.
    batch_period: Option<f64>,
    /// Headers on every message.
    headers: Headers,
}

impl Plan {
    fn new(args: &BenchArgs) -> Result<Plan, BenchError> {
        let invalid = |flag, why: String| Err(BenchError::InvalidArg { flag, why });
        if args.size < HEADER_LEN {
            return invalid("size", format!("must be at least {HEADER_LEN} bytes"));
        }
        if args.size > MAX_BODY_LEN {
            return invalid("size", format!("must be at most {MAX_BODY_LEN} bytes"));
        }
        if args.batch == 0 {
            return invalid("batch", "must be at least 1".into());
        }
        let frame = args
            .batch
            .saturating_mul(args.size + MPUB_OVERHEAD_PER_MESSAGE);
        if args.batch > 1 && frame > MAX_FRAME_LEN {
            return invalid(
                "batch",
                format!(
                    "{} messages of {} bytes do not fit in one {MAX_FRAME_LEN}-byte frame",
                    args.batch, args.size
                ),
            );
        }
        if args.producers == 0 {
            return invalid("producers", "must be at least 1".into());
        }
        if args.producers > 1 << 16 {
            return invalid("producers", "must be at most 65536".into());
        }
        if args.pipeline == 0 {
            return invalid("pipeline", "must be at least 1".into());
        }
        if args.consumers > 0 && args.rdy == 0 {
            return invalid("rdy", "must be at least 1".into());
        }
        if args.nsq && (!args.headers.is_empty() || args.msg_ids || args.keys.is_some()) {
            return invalid(
                "nsq",
                "NSQ messages have no headers; --header, --msg-ids and --keys are for QUIC".into(),
            );
        }
        if args.keys == Some(0) {
            return invalid("keys", "must be at least 1".into());
        }
        if args.count == Some(0) {
            return invalid("count", "must be at least 1".into());
        }
        if args.duration == Some(Duration::ZERO) {
            return invalid("duration", "must be more than 0".into());
        }
        let batch_period = match args.rate {
            Some(0) => return invalid("rate", "must be at least 1 message per second".into()),
            Some(rate) => Some(args.batch as f64 * args.producers as f64 / rate as f64),
            None => None,
        };
        let topic = TopicName::new(&args.topic).map_err(|source| BenchError::InvalidName {
            flag: "topic",
            source,
        })?;
        let channel =
            ChannelName::new(&args.channel).map_err(|source| BenchError::InvalidName {
                flag: "channel",
                source,
            })?;
        let count = match (args.count, args.duration) {
            (Some(count), _) => Some(count),
            (None, Some(_)) => None,
            (None, None) => Some(DEFAULT_COUNT),
        };
        let mut headers = Headers::new();
        for header in &args.headers {
            let Some((name, value)) = header.split_once('=') else {
                return invalid("header", format!("{header:?} is not NAME=VALUE"));
            };
            headers.push(name, value);
        }
        if let Err(e) = headers.validate() {
            return invalid("header", e.to_string());
        }
        Ok(Plan {
            topic,
            channel,
            count,
            batch_period,
            headers,
        })
    }
}

fn external_trust(args: &BenchArgs, addr: SocketAddr) -> Result<Trust, BenchError> {
    if let Some(ca) = &args.ca {
        return Ok(Trust::CaFile(ca.clone()));
    }
    if let Some(pin) = &args.fingerprint {
        return parse_fingerprint(pin)
            .map(Trust::Fingerprint)
            .map_err(BenchError::Fingerprint);
    }
    if args.insecure {
        return Ok(Trust::DangerousInsecure);
    }
    // Like the other CLI commands: a broker started with the default data dir, here.
    let dev = PathBuf::from("quiver-data").join("tls").join("cert.pem");
    if dev.exists() {
        return Ok(Trust::CaFile(dev));
    }
    Err(BenchError::NoTrust { addr })
}

/// What the load phase measured.
#[derive(Debug)]
struct Outcome {
    published: u64,
    consumed: u64,
    publish_errors: u64,
    /// Published but never delivered before the drain timeout.
    shortfall: u64,
    publish_secs: f64,
    consume_secs: f64,
    elapsed_secs: f64,
    latency: hdrhistogram::Histogram<u64>,
    publish_latency: hdrhistogram::Histogram<u64>,
}

async fn load(
    args: &BenchArgs,
    plan: &Plan,
    options: &ClientOptions,
) -> Result<Outcome, BenchError> {
    // In a cluster every connection goes to the topic's leader, whichever node was named.
    let options = &serving(options, plan).await?;
    let shared = Arc::new(Shared {
        published: AtomicU64::new(0),
        publish_errors: AtomicU64::new(0),
        consumed: AtomicU64::new(0),
        target: AtomicU64::new(u64::MAX),
        live_consumers: AtomicUsize::new(0),
        publish_latency: std::sync::Mutex::new(consumer::new_histogram()),
        wake: Notify::new(),
    });

    // Consumers first, so the channel exists before the first message is published.
    let stop = CancellationToken::new();
    let mut consumers = JoinSet::new();
    let mut consumer_clients = Vec::with_capacity(args.consumers);
    for index in 0..args.consumers {
        let client = connect(options, "consumer", index).await?;
        let sub = client
            .subscribe(&plan.topic, &plan.channel, SubscribeOptions::default())
            .await
            .map_err(|source| BenchError::Subscribe {
                index,
                topic: args.topic.clone(),
                channel: args.channel.clone(),
                source: Box::new(source),
            })?;
        sub.rdy(args.rdy)
            .await
            .map_err(|source| BenchError::Subscribe {
                index,
                topic: args.topic.clone(),
                channel: args.channel.clone(),
                source: Box::new(source),
            })?;
        shared.live_consumers.fetch_add(1, Ordering::Relaxed);
        consumers.spawn(consumer::run(index, sub, shared.clone(), stop.clone()));
        consumer_clients.push(client);
    }

    let mut producer_clients = Vec::with_capacity(args.producers);
    let mut producers = Vec::with_capacity(args.producers);
    for index in 0..args.producers {
        let client = connect(options, "producer", index).await?;
        let producer = client
            .producer()
            .await
            .map_err(|source| BenchError::OpenProducer {
                index,
                source: Box::new(source),
            })?;
        producers.push(producer);
        producer_clients.push(client);
    }

    let progress = progress::start(args, plan.count, shared.clone());
    let start = Instant::now();
    let deadline = args.duration.map(|d| start + d);
    let mut publishing = JoinSet::new();
    for (index, producer) in producers.into_iter().enumerate() {
        let quota = plan.count.map_or(u64::MAX, |count| {
            let producers = args.producers as u64;
            count / producers + u64::from((index as u64) < count % producers)
        });
        let lane = producer::Lane {
            index,
            topic: plan.topic.clone(),
            size: args.size,
            batch: args.batch,
            quota,
            start,
            deadline,
            batch_period: plan.batch_period,
            headers: plan.headers.clone(),
            msg_ids: args.msg_ids.then(crate::message::random_msg_id),
            keys: args.keys,
        };
        publishing.spawn(producer::run(producer, lane, args.pipeline, shared.clone()));
    }
    while let Some(done) = publishing.join_next().await {
        done?;
    }
    let publish_end = Instant::now();
    for client in &producer_clients {
        close(client).await;
    }

    let published = shared.published.load(Ordering::Acquire);
    if args.consumers > 0 {
        shared.drain(published, publish_end).await;
    }
    stop.cancel();
    let (latency, consume_end) = gather(&mut consumers).await?;
    for client in &consumer_clients {
        close(client).await;
    }
    drop(progress);

    Ok(Outcome::of(
        args,
        &shared,
        published,
        start,
        publish_end,
        consume_end,
        latency,
    ))
}

impl Outcome {
    /// What a run measured, from its counters and times: the same for QUIC and NSQ runs.
    pub(super) fn of(
        args: &BenchArgs,
        shared: &Shared,
        published: u64,
        start: Instant,
        publish_end: Instant,
        consume_end: Option<Instant>,
        latency: hdrhistogram::Histogram<u64>,
    ) -> Outcome {
        let consumed = shared.consumed.load(Ordering::Acquire);
        let consume_end = consume_end.unwrap_or(publish_end);
        let secs = |end: Instant| end.saturating_duration_since(start).as_secs_f64();
        Outcome {
            published,
            consumed,
            publish_errors: shared.publish_errors.load(Ordering::Acquire),
            shortfall: if args.consumers > 0 {
                published.saturating_sub(consumed)
            } else {
                0
            },
            publish_secs: secs(publish_end),
            consume_secs: secs(consume_end),
            elapsed_secs: secs(publish_end.max(consume_end)),
            latency,
            publish_latency: shared
                .publish_latency
                .lock()
                .map(|h| h.clone())
                .unwrap_or_else(|e| e.into_inner().clone()),
        }
    }
}

/// `options` aimed at the broker that serves the bench's topic: the one named, or in a
/// cluster the topic's leader.
async fn serving(options: &ClientOptions, plan: &Plan) -> Result<ClientOptions, BenchError> {
    let client = Client::connect_serving(options, &plan.topic, None, Duration::from_secs(10))
        .await
        .map_err(|source| BenchError::Connect {
            role: "locate",
            index: 0,
            addr: options.addr,
            source: Box::new(source),
        })?;
    let addr = client.remote_addr();
    close(&client).await;
    if addr != options.addr {
        tracing::info!(leader = %addr, "the topic's leader serves the bench");
    }
    Ok(ClientOptions {
        addr,
        ..options.clone()
    })
}

async fn connect(
    options: &ClientOptions,
    role: &'static str,
    index: usize,
) -> Result<Client, BenchError> {
    Client::connect(options)
        .await
        .map_err(|source| BenchError::Connect {
            role,
            index,
            addr: options.addr,
            source: Box::new(source),
        })
}

async fn close(client: &Client) {
    if tokio::time::timeout(Duration::from_secs(2), client.close())
        .await
        .is_err()
    {
        tracing::debug!("closing a bench connection timed out");
    }
}

/// Nanoseconds since the Unix epoch.
fn wall_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

mod progress {
    //! The progress bar: consumed/published and rates, refreshed a few times a second.

    use super::*;
    use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

    #[derive(Debug)]
    pub(super) struct Progress {
        bar: Option<(ProgressBar, tokio::task::JoinHandle<()>)>,
    }

    pub(super) fn start(args: &BenchArgs, count: Option<u64>, shared: Arc<Shared>) -> Progress {
        if args.no_progress || args.json || !std::io::stderr().is_terminal() {
            return Progress { bar: None };
        }
        let template = match count {
            Some(_) => "{spinner} [{elapsed_precise}] {bar:30} {human_pos}/{human_len} {msg}",
            None => "{spinner} [{elapsed_precise}] {msg}",
        };
        let bar = ProgressBar::with_draw_target(count, ProgressDrawTarget::stderr());
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style);
        }
        let consuming = args.consumers > 0;
        let ticker = {
            let bar = bar.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(250));
                let mut last = (Instant::now(), 0u64, 0u64);
                loop {
                    tick.tick().await;
                    let now = Instant::now();
                    let published = shared.published.load(Ordering::Relaxed);
                    let consumed = shared.consumed.load(Ordering::Relaxed);
                    let dt = now.duration_since(last.0).as_secs_f64().max(1e-3);
                    let pub_rate = (published - last.1.min(published)) as f64 / dt;
                    let con_rate = (consumed - last.2.min(consumed)) as f64 / dt;
                    last = (now, published, consumed);
                    if consuming {
                        bar.set_position(consumed);
                        bar.set_message(format!(
                            "consumed {} msg/s · published {} ({} msg/s)",
                            report::group(con_rate as u64),
                            report::group(published),
                            report::group(pub_rate as u64),
                        ));
                    } else {
                        bar.set_position(published);
                        bar.set_message(format!(
                            "published · {} msg/s",
                            report::group(pub_rate as u64)
                        ));
                    }
                }
            })
        };
        Progress {
            bar: Some((bar, ticker)),
        }
    }

    impl Drop for Progress {
        fn drop(&mut self) {
            if let Some((bar, ticker)) = self.bar.take() {
                ticker.abort();
                bar.finish_and_clear();
            }
        }
    }
}
