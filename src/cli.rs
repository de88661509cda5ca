//! Command-line parsing and the commands themselves (`quiver stats` in `cli/stats.rs`,
//! `quiver sub` in `cli/sub.rs`, `quiver cluster` in `cli/cluster.rs`). Only this module and
//! `main.rs` use anyhow.

use std::collections::VecDeque;
use std::io::{BufRead, Write};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use quiver::client::{Client, ClientOptions, Confirmation, ProducerOptions};
use quiver::config::{parse_duration, Config};
use quiver::message::{ChannelName, NewMessage, TopicName};
use quiver::server::Server;
use quiver::transport::tls::{parse_fingerprint, Trust};

mod cluster;
mod stats;
mod sub;

#[derive(Debug, Parser)]
#[command(
    name = "quiver",
    version,
    about = "A message broker and router over QUIC"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker.
    Serve(ServeArgs),
    /// Publish a message, or one message per line of stdin.
    Pub(PubArgs),
    /// Print messages from a channel, FINning each one.
    Sub(SubArgs),
    /// Show topics and channels: depth, in flight, deferred, requeued, timed out, dead-lettered;
    /// and each plugin binding's calls, faults and circuit breaker.
    Stats(StatsArgs),
    /// Load a broker and report throughput, latency and memory.
    Bench(quiver::bench::BenchArgs),
    /// Work with rules files.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Write, build and try out WebAssembly plugins: new, build, test.
    Plugin(quiver::authoring::PluginArgs),
    /// Send each message of a channel to HTTP endpoints (nsq_to_http over QUIC).
    ToHttp(ToHttpCommand),
    /// Authentication helpers.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Clusters (in progress): `init` writes a development cluster's CA, certificates and
    /// node configs.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

#[derive(Debug, Subcommand)]
enum AuthCommand {
    /// Make a new random token: prints the secret (give it to the client) and the
    /// `[[auth.token]]` entry (its SHA-256, for the broker's config).
    Token {
        /// The identity the token authenticates as.
        name: String,
    },
    /// Print the SHA-256 of a secret read from stdin, for `[[auth.token]] sha256`.
    Hash,
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Parse a rules file, load every plugin and run its init, without a broker.
    Check {
        /// The rules file.
        file: PathBuf,
        /// Take the plugin limits from this config file's [plugins] section.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Debug, Args)]
struct ServeArgs {
    /// TOML config file; flags override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Data directory [default: ./quiver-data].
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// QUIC listen address [default: 127.0.0.1:7400].
    #[arg(long)]
    quic: Option<SocketAddr>,
    /// HTTP admin listen address [default: 127.0.0.1:7401].
    #[arg(long)]
    http: Option<SocketAddr>,
    /// NSQ TCP protocol V2 listen address, or `off` [default: 127.0.0.1:4150].
    #[arg(long, value_parser = parse_listen)]
    nsq_tcp: Option<Listen>,
    /// nsqd HTTP API listen address, or `off` [default: 127.0.0.1:4151].
    #[arg(long, value_parser = parse_listen)]
    nsq_http: Option<Listen>,
    /// Certificate chain (PEM) instead of the self-signed development certificate.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) for --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mTLS).
    #[arg(long)]
    tls_client_ca: Option<PathBuf>,
    /// Default message timeout, e.g. 60s.
    #[arg(long, value_parser = parse_duration)]
    msg_timeout: Option<Duration>,
    /// Default max attempts per channel before dead-lettering (0 = unlimited).
    #[arg(long)]
    max_attempts: Option<u16>,
    /// When a publish is confirmed: always (after its fsync), interval:DURATION (after the
    /// write; fsync within the interval) or never [default: interval:10ms].
    #[arg(long)]
    fsync: Option<quiver::storage::FsyncPolicy>,
    /// Roll log segments at this many bytes [default: 67108864].
    #[arg(long)]
    segment_bytes: Option<u64>,
    /// Delete log segments older than this (e.g. 168h), finished or not.
    #[arg(long, value_parser = parse_duration)]
    max_age: Option<Duration>,
    /// Delete the oldest log segments while a topic's log is larger than this many bytes.
    #[arg(long)]
    max_bytes: Option<u64>,
    /// Rules file binding plugins to topics and channels, and granting permissions;
    /// reloaded on change and SIGHUP.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Serve non-loopback addresses without authentication (logged as a warning).
    #[arg(long)]
    allow_anonymous: bool,
}

/// How CLI clients find and trust the broker.
#[derive(Debug, Args)]
struct ConnectArgs {
    /// Broker QUIC address.
    #[arg(long, env = "QUIVER_ADDR", default_value = "127.0.0.1:7400")]
    addr: SocketAddr,
    /// Trust this CA (or self-signed certificate) file.
    #[arg(long, env = "QUIVER_CA")]
    ca: Option<PathBuf>,
    /// Trust exactly the certificate with this SHA-256 fingerprint.
    #[arg(long, env = "QUIVER_FINGERPRINT")]
    fingerprint: Option<String>,
    /// Skip certificate verification. Development only.
    #[arg(long)]
    insecure: bool,
    /// Name to verify in the broker's certificate.
    #[arg(long, default_value = "localhost")]
    server_name: String,
    /// Authenticate with this token (or auth server secret) before anything else.
    #[arg(long, env = "QUIVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Without --ca, --fingerprint or --insecure, trust <DATA_DIR>/tls/cert.pem: the dev
    /// certificate of a broker started in the same directory.
    #[arg(long, default_value = "quiver-data")]
    data_dir: PathBuf,
}

#[derive(Debug, Args)]
struct PubArgs {
    topic: TopicName,
    /// The message; without it, each line of stdin is one message.
    message: Option<String>,
    /// Header as key=value; repeatable.
    #[arg(short = 'H', long = "header", value_parser = parse_header)]
    headers: Vec<(String, String)>,
    /// Deliver no earlier than this delay from now (DPUB), e.g. 30s.
    #[arg(long, value_parser = parse_duration)]
    defer: Option<Duration>,
    /// Order key (header quiver-order-key): an ordered channel delivers one key's messages
    /// one at a time, in order.
    #[arg(long)]
    key: Option<String>,
    /// Message id (header quiver-msg-id): within the topic's dedup window the broker stores
    /// an id once. Only with a MESSAGE argument.
    #[arg(long, requires = "message", conflicts_with = "auto_id")]
    id: Option<String>,
    /// Give every message a random message id.
    #[arg(long)]
    auto_id: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Debug, Args)]
struct SubArgs {
    topic: TopicName,
    channel: ChannelName,
    /// Exit after this many messages.
    #[arg(long, short = 'n')]
    count: Option<u64>,
    /// One JSON object per message: id, timestamp, attempts, headers, body.
    #[arg(long)]
    json: bool,
    /// Messages in flight at once.
    #[arg(long, default_value_t = 200)]
    rdy: u32,
    /// Message timeout to ask for, e.g. 30s.
    #[arg(long, value_parser = parse_duration)]
    msg_timeout: Option<Duration>,
    /// End when the subscription is lost (the connection drops, or on a cluster the topic's
    /// leader changes) instead of subscribing again where the topic is served.
    #[arg(long)]
    no_reconnect: bool,
    /// Another node of the cluster to find the topic through when the one at --addr does
    /// not answer, after a subscription was lost; repeatable.
    #[arg(long = "seed", value_name = "ADDR")]
    seeds: Vec<SocketAddr>,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Debug, Args)]
struct ToHttpCommand {
    #[command(flatten)]
    bridge: quiver::to_http::ToHttpArgs,
    #[command(flatten)]
    connect: ConnectArgs,
}

#[derive(Debug, Args)]
struct StatsArgs {
    /// Only this topic.
    #[arg(long)]
    topic: Option<TopicName>,
    /// The raw JSON document.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    connect: ConnectArgs,
}

pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => serve(args).await,
        Command::Pub(args) => publish(args).await,
        Command::Sub(args) => sub::subscribe(args).await,
        Command::Stats(args) => stats::stats(args).await,
        Command::ToHttp(args) => to_http(args).await,
        Command::Auth(command) => auth(command),
        Command::Cluster(command) => cluster::run(command),
        Command::Plugin(args) => Ok(quiver::authoring::run(args)?),
        Command::Bench(args) => {
            let json = args.json;
            let report = quiver::bench::run(args).await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                report.print_text();
            }
            Ok(())
        }
        Command::Rules(RulesCommand::Check { file, config }) => check_rules(file, config),
    }
}

/// `quiver rules check`: one line per binding, or every problem and exit status 1.
fn check_rules(file: PathBuf, config: Option<PathBuf>) -> Result<()> {
    let limits = match config {
        Some(path) => Config::from_file(&path)?.plugins.limits(),
        None => quiver::plugin::PluginLimits::default(),
    };
    let report = quiver::rules::check(&file, limits);
    for line in &report.bindings {
        println!("{line}");
    }
    if report.is_ok() {
        println!(
            "{}: {} binding(s), all good",
            file.display(),
            report.bindings.len()
        );
        return Ok(());
    }
    for problem in &report.problems {
        println!("problem: {problem}");
    }
    bail!(
        "{}: {} problem(s) found",
        file.display(),
        report.problems.len()
    )
}

/// A listen address or `off`.
#[derive(Debug, Clone, Copy)]
struct Listen(Option<SocketAddr>);

fn parse_listen(text: &str) -> Result<Listen, String> {
    quiver::config::parse_off_or_addr(text).map(Listen)
}

fn parse_header(text: &str) -> Result<(String, String), String> {
    let (k, v) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not key=value"))?;
    if k.is_empty() {
        return Err(format!("{text:?} has an empty key"));
    }
    Ok((k.to_string(), v.to_string()))
}

fn auth(command: AuthCommand) -> Result<()> {
    match command {
        AuthCommand::Token { name } => {
            if name.is_empty() || name.chars().any(char::is_whitespace) {
                bail!("the token's name must be non-empty and hold no spaces");
            }
            let secret = quiver::auth::new_secret()?;
            println!("# secret for {name} (clients: --token or QUIVER_TOKEN); shown once:");
            println!("{secret}");
            println!();
            println!("# for the broker's config file:");
            println!("[[auth.token]]");
            println!("name = {name:?}");
            println!("sha256 = {:?}", quiver::auth::hash_token(&secret));
        }
        AuthCommand::Hash => {
            let mut secret = String::new();
            std::io::stdin().read_line(&mut secret)?;
            println!(
                "{}",
                quiver::auth::hash_token(secret.trim_end_matches(['\r', '\n']))
            );
        }
    }
    Ok(())
}

async fn serve(args: ServeArgs) -> Result<()> {
    let mut config = match &args.config {
        Some(path) => Config::from_file(path)?,
        None => Config::default(),
    };
    apply_overrides(&mut config, args);
    let server = Server::start(config.clone()).await?;
    println!("quiver {} serving", env!("CARGO_PKG_VERSION"));
    println!("  QUIC    {}  (ALPN quiver/1)", server.quic_addr());
    println!("  HTTP    http://{}", server.http_addr());
    if let Some(addr) = server.nsq_tcp_addr() {
        println!("  NSQ TCP {addr}");
    }
    if let Some(addr) = server.nsq_http_addr() {
        println!("  NSQ HTTP http://{addr}");
    }
    println!("  data    {}", config.data_dir.display());
    println!("  cert    {}", server.cert_path().display());
    println!("  sha256  {}", server.fingerprint());
    std::io::stdout().flush()?;
    wait_for_signal().await?;
    server.shutdown().await;
    Ok(())
}

fn apply_overrides(config: &mut Config, args: ServeArgs) {
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(addr) = args.quic {
        config.listen.quic = addr;
    }
    if let Some(addr) = args.http {
        config.listen.http = addr;
    }
    if let Some(addr) = args.nsq_tcp {
        config.nsq.tcp = addr.0;
    }
    if let Some(addr) = args.nsq_http {
        config.nsq.http = addr.0;
    }
    if args.tls_cert.is_some() {
        config.tls.cert = args.tls_cert;
        config.tls.key = args.tls_key;
    }
    if args.tls_client_ca.is_some() {
        config.tls.client_ca = args.tls_client_ca;
    }
    if let Some(timeout) = args.msg_timeout {
        config.broker.msg_timeout = timeout;
    }
    if let Some(fsync) = args.fsync {
        config.storage.fsync = fsync;
    }
    if let Some(bytes) = args.segment_bytes {
        config.storage.segment_bytes = bytes;
    }
    if args.max_age.is_some() {
        config.storage.max_age = args.max_age;
    }
    if args.max_bytes.is_some() {
        config.storage.max_bytes = args.max_bytes;
    }
    if let Some(max) = args.max_attempts {
        config.broker.max_attempts = max;
    }
    if args.allow_anonymous {
        config.auth.allow_anonymous = true;
    }
    if args.rules.is_some() {
        config.rules_file = args.rules;
        config.rules = None;
    }
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("waiting for SIGINT")?,
        _ = term.recv() => {}
    }
    Ok(())
}

/// `quiver to-http`: runs until SIGTERM or SIGINT, then drains and prints a summary. A second
/// signal quits at once; the broker then requeues whatever was in flight.
async fn to_http(args: ToHttpCommand) -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    // Installed before anything else, so a signal during start-up is a drain, not a kill.
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let plan = quiver::to_http::Plan::new(args.bridge)?;
    let client = connect_serving(&args.connect, plan.topic(), Some(plan.channel())).await?;
    print_line(&format!(
        "to-http: {}/{}: {}",
        plan.topic(),
        plan.channel(),
        plan.describe()
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    let signals = tokio::spawn({
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("to-http: draining: finishing requests in flight (signal again to quit now)");
            stop.cancel();
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            eprintln!("to-http: quitting without draining");
            std::process::exit(130);
        }
    });
    let summary = quiver::to_http::run(&client, plan, stop, |line| print_line(&line)).await;
    signals.abort();
    client.close().await;
    print_line(&summary?.to_string());
    Ok(())
}

/// A line on stdout; a closed stdout is not worth failing over.
fn print_line(line: &str) {
    let _ = writeln!(std::io::stdout().lock(), "{line}");
}

fn client_options(args: &ConnectArgs) -> Result<ClientOptions> {
    let trust = if let Some(ca) = &args.ca {
        Trust::CaFile(ca.clone())
    } else if let Some(pin) = &args.fingerprint {
        Trust::Fingerprint(parse_fingerprint(pin)?)
    } else if args.insecure {
        Trust::DangerousInsecure
    } else {
        let dev = args.data_dir.join("tls").join("cert.pem");
        if !dev.exists() {
            bail!(
                "no way to trust the broker: pass --ca FILE, --fingerprint SHA256 or --insecure \
                 (or run from the directory where `quiver serve` made {})",
                dev.display()
            );
        }
        Trust::CaFile(dev)
    };
    let mut options = ClientOptions::new(args.addr, trust);
    options.server_name = args.server_name.clone();
    options.token = args.token.clone();
    Ok(options)
}

async fn connect(args: &ConnectArgs) -> Result<Client> {
    Client::connect(&client_options(args)?)
        .await
        .with_context(|| format!("connecting to {}", args.addr))
}

/// Connects to the broker that serves `topic`: in a cluster, the node that leads it,
/// whichever node `--addr` names.
async fn connect_serving(
    args: &ConnectArgs,
    topic: &TopicName,
    channel: Option<&ChannelName>,
) -> Result<Client> {
    let options = client_options(args)?;
    Client::connect_serving(&options, topic, channel, LOCATE_PATIENCE)
        .await
        .with_context(|| {
            format!(
                "connecting to the broker serving {topic} (via {})",
                args.addr
            )
        })
}

/// How long a client command waits for a topic without a leader (a cluster election).
const LOCATE_PATIENCE: Duration = Duration::from_secs(10);

async fn publish(args: PubArgs) -> Result<()> {
    if let Some(id) = &args.id {
        quiver::message::validate_msg_id(id)?;
    }
    let client = connect_serving(&args.connect, &args.topic, None).await?;
    let options = ProducerOptions::default().auto_msg_id(args.auto_id);
    let producer = client.producer_with(options).await?;
    let make = |body: String| {
        let mut m = NewMessage::new(body);
        for (k, v) in &args.headers {
            m.headers.push(k.clone(), v.clone());
        }
        if let Some(key) = &args.key {
            m = m.with_order_key(key.clone());
        }
        if let Some(id) = &args.id {
            m = m.with_msg_id(id.clone());
        }
        m
    };
    let mut published = 0u64;
    let mut duplicates = 0u64;
    if let Some(message) = &args.message {
        let message = make(message.clone());
        let receipt = match args.defer {
            Some(delay) => {
                producer
                    .publish_deferred(&args.topic, message, delay)
                    .await?
            }
            None => producer.publish(&args.topic, message).await?,
        };
        duplicates += receipt.duplicate_count() as u64;
        published += 1;
    } else if let Some(delay) = args.defer {
        for line in std::io::stdin().lock().lines() {
            let line = line.context("reading stdin")?;
            let receipt = producer
                .publish_deferred(&args.topic, make(line), delay)
                .await?;
            duplicates += receipt.duplicate_count() as u64;
            published += 1;
        }
    } else {
        // Pipeline stdin lines in order, with a bounded number awaiting confirmation.
        let mut waiting: VecDeque<Confirmation> = VecDeque::new();
        for line in std::io::stdin().lock().lines() {
            let line = line.context("reading stdin")?;
            if waiting.len() >= 256 {
                if let Some(confirm) = waiting.pop_front() {
                    duplicates += confirm.wait().await?.duplicate_count() as u64;
                    published += 1;
                }
            }
            waiting.push_back(producer.start_publish(&args.topic, make(line)).await?);
        }
        for confirm in waiting {
            duplicates += confirm.wait().await?.duplicate_count() as u64;
            published += 1;
        }
    }
    if duplicates > 0 {
        eprintln!("{duplicates} of {published} published were duplicates of messages already stored (same message id); not stored again");
    }
    tracing::debug!(published, duplicates, "done");
    client.close().await;
    Ok(())
}
