//! `quiver to-http`: the `nsq_to_http` equivalent over QUIC. It consumes one topic/channel
//! with the [`client::consumer`](crate::client::consumer) and sends every message to one or
//! more HTTP endpoints.
//!
//! - `--post URL`: the body is the message; `--content-type` and `--header`s are added.
//! - `--get URL`: `%s` in the URL (exactly once) is replaced by the message body, escaped as a
//!   query component (`nsq_to_http`'s convention).
//! - A message is FIN'd when its request(s) answered 2xx. Anything else (another status, a
//!   connection error, no answer within `--http-timeout`) REQs it with exponential backoff
//!   (`--backoff` doubled per attempt, capped by `--max-backoff`).
//! - After `--max-attempts` failed attempts the message is copied to `<topic>.dead`, with
//!   `quiver-dead-*` headers saying why, and FIN'd. If the copy fails it is requeued instead.
//! - `--mode round-robin` sends each attempt to the next URL in turn; `--mode fanout` sends it
//!   to every URL at once and FINs only when all of them succeeded.
//!
//! # Guarantees
//! At least once, per endpoint. A message is FIN'd only after the endpoint(s) answered 2xx, so
//! a crash or a lost FIN means a repeat, never a loss. In fan-out mode a retry goes to *every*
//! URL again, including those that already took the message: no per-URL progress is kept,
//! because it would live only in this process while the retry may reach another one. Each
//! request carries `Quiver-Message-Id` and `Quiver-Attempts` so endpoints can deduplicate.
//!
//! # Shutdown
//! When `stop` fires (SIGTERM or SIGINT in the CLI) no new message is taken (CLS: the broker
//! stops delivering), requests already sent are finished and their messages FIN'd or REQ'd,
//! messages received but not started are given back at once (REQ 0), and [`run`] returns.

mod progress;
mod target;

pub use progress::{Progress, Summary, Totals};
pub use target::{query_escape, Mode};

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::client::consumer::{self, ConsumerConfig};
use crate::client::{Client, ClientError, Producer};
use crate::config::parse_duration;
use crate::message::{ChannelName, Delivery, NewMessage, TopicName};
use progress::Counters;
use target::{Failure, Targets};

/// Longest `quiver-dead-error` header value, so an error page quoted in an error never makes
/// the dead-letter copy too large.
const MAX_ERROR_HEADER: usize = 512;

/// Options of `quiver to-http`; names follow `nsq_to_http` where they mean the same.
#[derive(Debug, Clone, clap::Args)]
pub struct ToHttpArgs {
    /// Topic to consume.
    #[arg(long)]
    pub topic: TopicName,
    /// Channel to consume from.
    #[arg(long, default_value = "to-http")]
    pub channel: ChannelName,
    /// POST each message to this URL, the body being the message (repeatable).
    #[arg(long = "post", value_name = "URL", required_unless_present = "get")]
    pub post: Vec<String>,
    /// GET this URL, with `%s` replaced by the query-escaped message (repeatable).
    #[arg(long = "get", value_name = "URL", conflicts_with_all = ["post", "content_type"])]
    pub get: Vec<String>,
    /// Content-Type of POST requests [default: application/octet-stream].
    #[arg(long)]
    pub content_type: Option<String>,
    /// Extra request header, as 'Key: Value' (repeatable).
    #[arg(long = "header", value_name = "KEY: VALUE")]
    pub headers: Vec<String>,
    /// How each attempt picks its URLs (nsq_to_http's `multicast` is taken for fanout).
    #[arg(long, value_enum, default_value_t = Mode::RoundRobin)]
    pub mode: Mode,
    /// Give up on a request after this long (connect, send and response), then REQ.
    #[arg(long, default_value = "20s", value_parser = parse_duration)]
    pub http_timeout: Duration,
    /// Give up on connecting to an endpoint after this long.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub http_connect_timeout: Duration,
    /// Messages in flight at once (RDY).
    #[arg(long, default_value_t = 200)]
    pub max_in_flight: u32,
    /// Messages being sent at once (`-n` in nsq_to_http).
    #[arg(long, short = 'n', default_value_t = 100)]
    pub concurrency: usize,
    /// Attempts before a message goes to `<topic>.dead`; 0 retries for ever.
    #[arg(long, default_value_t = 5)]
    pub max_attempts: u16,
    /// REQ delay after the first failed attempt; doubled per attempt.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub backoff: Duration,
    /// Longest REQ delay.
    #[arg(long, default_value = "120s", value_parser = parse_duration)]
    pub max_backoff: Duration,
    /// Message timeout to ask the broker for, e.g. 60s [default: the broker's].
    #[arg(long, value_parser = parse_duration)]
    pub msg_timeout: Option<Duration>,
    /// Print a progress line this often; 0 turns it off.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub status_every: Duration,
}

/// What can stop `quiver to-http`.
#[derive(Debug, thiserror::Error)]
pub enum ToHttpError {
    #[error("{option} {value:?}: {why}")]
    InvalidOption {
        option: &'static str,
        value: String,
        why: String,
    },
    #[error("consuming {topic}/{channel}")]
    Consume {
        topic: TopicName,
        channel: ChannelName,
        #[source]
        source: ClientError,
    },
    #[error("the broker ended the subscription to {topic}/{channel}")]
    Ended {
        topic: TopicName,
        channel: ChannelName,
    },
}

/// Validated options: every URL and header parsed once, before connecting.
#[derive(Debug)]
pub struct Plan {
    topic: TopicName,
    channel: ChannelName,
    targets: Targets,
    consumer: ConsumerConfig,
    max_attempts: u16,
    status_every: Duration,
}

impl Plan {
    pub fn new(args: ToHttpArgs) -> Result<Plan, ToHttpError> {
        let invalid = |option, value: String, why: &str| ToHttpError::InvalidOption {
            option,
            value,
            why: why.to_string(),
        };
        if args.max_in_flight == 0 {
            return Err(invalid("--max-in-flight", "0".into(), "must be at least 1"));
        }
        if args.concurrency == 0 {
            return Err(invalid("--concurrency", "0".into(), "must be at least 1"));
        }
        if args.http_timeout.is_zero() {
            return Err(invalid("--http-timeout", "0".into(), "must be positive"));
        }
        let targets = Targets::new(&args)?;
        let consumer = ConsumerConfig {
            max_in_flight: args.max_in_flight,
            concurrency: args.concurrency,
            msg_timeout: args.msg_timeout,
            // Slow endpoints keep their messages: TOUCH while a request runs.
            auto_touch: true,
            // Attempts are counted here, so that the dead-letter copy can say what failed
            // and goes out right after the last failure rather than one backoff later.
            max_attempts: 0,
            backoff_base: args.backoff,
            backoff_max: args.max_backoff.max(args.backoff),
        };
        Ok(Plan {
            topic: args.topic,
            channel: args.channel,
            targets,
            consumer,
            max_attempts: args.max_attempts,
            status_every: args.status_every,
        })
    }

    pub fn topic(&self) -> &TopicName {
        &self.topic
    }

    pub fn channel(&self) -> &ChannelName {
        &self.channel
    }

    /// One line describing where messages go, for the start-up banner.
    pub fn describe(&self) -> String {
        self.targets.describe()
    }
}

/// Runs the bridge until `stop` fires, then drains (see the module docs). `status` gets a
/// progress line every `--status-every`. Returns the counts when it stopped because of
/// `stop`; the broker ending the subscription first is an error.
pub async fn run(
    client: &Client,
    plan: Plan,
    stop: CancellationToken,
    status: impl Fn(String) + Send + 'static,
) -> Result<Summary, ToHttpError> {
    let counters = Arc::new(Counters::default());
    let ticker = (!plan.status_every.is_zero()).then(|| {
        let counters = counters.clone();
        tokio::spawn(progress::report_every(plan.status_every, counters, status))
    });
    let started = tokio::time::Instant::now();
    let bridge = Arc::new(Bridge {
        targets: plan.targets,
        counters: counters.clone(),
        max_attempts: plan.max_attempts,
        stop: stop.clone(),
        dead: DeadLetters::new(client.clone(), &plan.topic, &plan.channel),
    });
    let handler = move |d: Delivery| {
        let bridge = bridge.clone();
        async move { bridge.deliver(d).await }
    };
    let result = consumer::run(
        client,
        &plan.topic,
        &plan.channel,
        plan.consumer,
        handler,
        stop.clone(),
    )
    .await;
    if let Some(ticker) = ticker {
        ticker.abort();
    }
    let consumed = result.map_err(|source| ToHttpError::Consume {
        topic: plan.topic.clone(),
        channel: plan.channel.clone(),
        source,
    })?;
    if !stop.is_cancelled() {
        return Err(ToHttpError::Ended {
            topic: plan.topic,
            channel: plan.channel,
        });
    }
    let totals = counters.totals();
    Ok(Summary {
        totals,
        // The consumer counts every REQ; those that were not failed attempts gave back
        // messages received but not started when the drain began.
        returned: consumed.requeued.saturating_sub(totals.retried),
        elapsed: started.elapsed(),
    })
}

/// What every handler shares.
#[derive(Debug)]
struct Bridge {
    targets: Targets,
    counters: Arc<Counters>,
    max_attempts: u16,
    stop: CancellationToken,
    dead: DeadLetters,
}

impl Bridge {
    /// One attempt at one message. `Ok` FINs it (delivered or dead-lettered); `Err` REQs it
    /// with backoff.
    async fn deliver(&self, d: Delivery) -> Result<(), Failure> {
        if self.stop.is_cancelled() {
            // A handler can start in the instant the drain begins; send nothing new. The
            // REQ counts as returned, not retried.
            return Err(Failure::ShuttingDown);
        }
        let exhausted = self.max_attempts > 0 && d.attempts > self.max_attempts;
        let failure = if exhausted {
            // Already past the limit: earlier deliveries timed out, were given back at a
            // drain, or ran with a higher limit. Attempts count deliveries, as in NSQ.
            Failure::Exhausted {
                attempts: d.attempts,
            }
        } else {
            match self.targets.send(&d, &self.counters).await {
                Ok(()) => {
                    self.counters.delivered();
                    return Ok(());
                }
                Err(failure) => failure,
            }
        };
        if self.max_attempts > 0 && d.attempts >= self.max_attempts {
            let id = d.id;
            match self.dead.copy(d, &failure).await {
                Ok(()) => {
                    self.counters.dead_lettered();
                    tracing::warn!(%id, error = %failure, "gave up; copied to the dead-letter topic");
                    return Ok(());
                }
                Err(e) => {
                    tracing::error!(%id, error = %e, "dead-lettering failed; requeueing");
                }
            }
        }
        self.counters.retried();
        Err(failure)
    }
}

/// Copies messages that used up their attempts to `<topic>.dead`, over one lazily opened
/// publish stream.
#[derive(Debug)]
struct DeadLetters {
    client: Client,
    dead_topic: TopicName,
    topic: TopicName,
    channel: ChannelName,
    producer: tokio::sync::OnceCell<Producer>,
}

impl DeadLetters {
    fn new(client: Client, topic: &TopicName, channel: &ChannelName) -> Self {
        DeadLetters {
            client,
            dead_topic: topic.dead_letter(),
            topic: topic.clone(),
            channel: channel.clone(),
            producer: tokio::sync::OnceCell::new(),
        }
    }

    async fn copy(&self, d: Delivery, failure: &Failure) -> Result<(), ClientError> {
        let mut message = NewMessage {
            headers: d.headers,
            body: d.body,
        };
        let error = truncate(&failure.to_string(), MAX_ERROR_HEADER);
        let headers = &mut message.headers;
        headers.push("quiver-dead-reason", "client-max-attempts");
        headers.push("quiver-dead-topic", self.topic.as_str());
        headers.push("quiver-dead-channel", self.channel.as_str());
        headers.push("quiver-dead-attempts", d.attempts.to_string());
        headers.push("quiver-dead-error", error);
        let producer = self
            .producer
            .get_or_try_init(|| self.client.producer())
            .await?;
        producer.publish(&self.dead_topic, message).await.map(drop)
    }
}

/// At most `max` bytes of `text`, cut at a character boundary.
fn truncate(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        args: ToHttpArgs,
    }

    fn parse(args: &[&str]) -> Result<Plan, String> {
        let cli = Cli::try_parse_from(std::iter::once("to-http").chain(args.iter().copied()))
            .map_err(|e| e.to_string())?;
        Plan::new(cli.args).map_err(|e| e.to_string())
    }

    #[test]
    fn post_or_get_is_required_and_they_do_not_mix() {
        assert!(parse(&["--topic", "t"]).is_err());
        assert!(parse(&[
            "--topic",
            "t",
            "--post",
            "http://a/",
            "--get",
            "http://b/?%s"
        ])
        .is_err());
        let err = parse(&["--topic", "t", "--get", "http://b/", "--content-type", "x"]);
        assert!(err.is_err(), "--content-type is for --post only");
        assert!(parse(&["--topic", "t", "--post", "http://a/"]).is_ok());
    }

    #[test]
    fn bad_values_name_the_option() {
        let err = parse(&["--topic", "t", "--post", "http://a/", "--concurrency", "0"])
            .err()
            .unwrap_or_default();
        assert!(err.contains("--concurrency"), "{err}");
        let err = parse(&["--topic", "t", "--post", "http://a/", "--header", "nocolon"])
            .err()
            .unwrap_or_default();
        assert!(err.contains("--header"), "{err}");
    }

    #[test]
    fn multicast_is_fanout() {
        let cli = Cli::try_parse_from([
            "x",
            "--topic",
            "t",
            "--post",
            "http://a/",
            "--mode",
            "multicast",
        ])
        .map_err(|e| e.to_string());
        assert!(matches!(cli.map(|c| c.args.mode), Ok(Mode::Fanout)));
    }

    #[test]
    fn truncate_cuts_at_a_char_boundary() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("héllo", 3), "hé");
        assert_eq!(truncate("abc", 10), "abc");
    }
}
