//! One NSQ connection: one task that turns commands into the same broker calls a QUIC
//! session makes, and answers with NSQ frames.
//!
//! Each turn of the loop applies every command already buffered, answers what is ready,
//! sends as many messages as the consumer's RDY allows, and writes it all at once; then it
//! waits for the next thing to do: bytes from the client, a publish confirmed, messages for
//! the consumer, a heartbeat due, or shutdown.
//!
//! # Invariants
//! - Replies go out in the order of the commands they answer. A publish is answered `OK`
//!   only once the broker confirms it durable (as QUIC's PUB-OK); replies that come after
//!   a publish still waiting for its confirmation wait in `replies` behind it. Messages and
//!   heartbeats are not replies and are sent at once.
//! - A fatal error is sent after every earlier reply, and then the connection closes.
//! - Dropping the [`Subscription`] (when the connection ends) requeues what was in flight.

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::Range;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::compress::Codec;
use super::identify::{self, ClientSettings, Offer};
use super::link::{Link, LinkError};
use super::refusal::{denied, error_chain, sub_failed};
use super::wire::{self, Command, NsqError, NsqId, Verb};
use super::Shared;
use crate::auth::{certificate_identity, AuthError, Connection, Credentials};
use crate::broker::delivery::{SettleError, Taken};
use crate::broker::{BrokerError, Principal, Subscription};
use crate::message::{NewMessage, TopicName};

/// Messages taken from the channel per lock.
const TAKE_BATCH: usize = 256;
/// Replies waiting for confirmations before the connection stops reading: back-pressure.
const MAX_UNANSWERED: usize = 4096;
/// How long a closing connection may spend answering what it still owes.
const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

type Confirmation = Pin<Box<dyn Future<Output = Result<Range<u64>, BrokerError>> + Send>>;

/// Where a connection is in nsqd's state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Init,
    Subscribed,
    /// After CLS: no new messages; FIN, REQ and TOUCH still work.
    Closing,
}

/// Which publish a confirmation answers.
#[derive(Debug, Clone, Copy)]
enum PubOp {
    Pub,
    Mpub,
    Dpub,
}

impl PubOp {
    fn verb(self) -> &'static str {
        match self {
            PubOp::Pub => "PUB",
            PubOp::Mpub => "MPUB",
            PubOp::Dpub => "DPUB",
        }
    }

    fn failed(self, e: &BrokerError) -> NsqError {
        let (code, verb) = match self {
            PubOp::Pub => ("E_PUB_FAILED", "PUB"),
            PubOp::Mpub => ("E_MPUB_FAILED", "MPUB"),
            PubOp::Dpub => ("E_DPUB_FAILED", "DPUB"),
        };
        NsqError::fatal(code, format!("{verb} failed {}", error_chain(e)))
    }
}

enum Reply {
    Response(Bytes),
    Error(NsqError),
}

enum Pending {
    Ready(Reply),
    Confirm { op: PubOp, confirm: Confirmation },
}

/// Why a connection ends.
#[derive(Debug)]
enum Stop {
    Fatal(NsqError),
    Link(LinkError),
    /// The client closed its side.
    Eof,
    /// Nothing from the client for two heartbeat intervals.
    Silent,
    ShuttingDown,
    /// The subscribed channel or topic was deleted.
    Ended(BrokerError),
}

impl From<NsqError> for Stop {
    fn from(e: NsqError) -> Stop {
        Stop::Fatal(e)
    }
}

impl From<LinkError> for Stop {
    fn from(e: LinkError) -> Stop {
        Stop::Link(e)
    }
}

/// Serves one accepted connection until it ends.
pub(super) async fn run(mut stream: TcpStream, remote: SocketAddr, shared: Arc<Shared>) {
    let mut input = BytesMut::with_capacity(64 * 1024);
    let magic = async {
        while input.len() < wire::MAGIC_V2.len() {
            if stream.read_buf(&mut input).await? == 0 {
                return Ok(false);
            }
        }
        Ok::<bool, std::io::Error>(true)
    };
    let limit = shared.config.heartbeat_interval * 2;
    match tokio::time::timeout(limit, magic).await {
        Ok(Ok(true)) => {}
        _ => return,
    }
    let rest = input.split_off(wire::MAGIC_V2.len());
    let mut link = Link::new(stream, rest);
    if &input[..] != wire::MAGIC_V2 {
        tracing::debug!(%remote, magic = ?&input[..], "NSQ connection with a bad protocol magic");
        // nsqd sends the bare code.
        wire::put_frame(&mut link.out, wire::FRAME_ERROR, b"E_BAD_PROTOCOL");
        let _ = link.flush(Some(Duration::from_secs(1))).await;
        link.shutdown().await;
        return;
    }
    tracing::debug!(%remote, "NSQ connection open");
    let settings = ClientSettings::new(&shared.config);
    let credentials = Credentials::new(
        Arc::clone(&shared.auth),
        Connection {
            remote,
            tls: false,
            certificate: None,
        },
    );
    let mut session = Session {
        credentials,
        heartbeat: heartbeat(settings.heartbeat),
        settings,
        link,
        remote,
        state: State::Init,
        identified: false,
        sub: None,
        replies: VecDeque::new(),
        taken: Vec::with_capacity(TAKE_BATCH),
        sampler: Sampler::new(remote),
        last_read: Instant::now(),
        shared,
    };
    let stop = session.serve().await;
    session.finish(stop).await;
}

struct Session {
    shared: Arc<Shared>,
    /// Who the connection is: its certificate after a TLS upgrade, or its AUTH.
    credentials: Credentials,
    link: Link,
    remote: SocketAddr,
    state: State,
    identified: bool,
    settings: ClientSettings,
    sub: Option<Subscription>,
    replies: VecDeque<Pending>,
    taken: Vec<Taken>,
    sampler: Sampler,
    heartbeat: Option<Interval>,
    last_read: Instant,
}

impl Session {
    async fn serve(&mut self) -> Stop {
        loop {
            if let Err(stop) = self.turn().await {
                return stop;
            }
            let read_deadline = self.settings.heartbeat.map(|hb| self.last_read + hb * 2);
            let reading = self.replies.len() < MAX_UNANSWERED;
            tokio::select! {
                biased;
                _ = self.shared.broker.shutting_down() => return Stop::ShuttingDown,
                _ = ended(self.sub.as_ref()) => {
                    let reason = self.sub.as_ref().map(|s| s.end_reason());
                    return Stop::Ended(reason.unwrap_or(BrokerError::Deleted));
                }
                _ = tick(&mut self.heartbeat) => {
                    wire::put_response(&mut self.link.out, wire::HEARTBEAT);
                }
                _ = sleep_until(read_deadline) => return Stop::Silent,
                result = first_confirm(&mut self.replies) => settle_front(&mut self.replies, result),
                read = self.link.read(), if reading => match read {
                    Ok(true) => self.last_read = Instant::now(),
                    Ok(false) => return Stop::Eof,
                    Err(e) => return Stop::Link(e),
                },
                _ = wait(self.sub.as_ref()) => {}
            }
        }
    }

    /// Applies the buffered commands, answers, delivers and writes.
    async fn turn(&mut self) -> Result<(), Stop> {
        while self.replies.len() < MAX_UNANSWERED {
            let gate = Gate {
                state: self.state,
                identified: self.identified,
                tls_missing: self.shared.config.tls_required && !self.link.is_tls(),
                heartbeats: self.settings.heartbeat.is_some(),
            };
            let decoded = wire::decode(&mut self.link.input, &self.shared.limits, |verb, raw| {
                gate.check(verb, raw)
            });
            match decoded? {
                Some(command) => self.exec(command).await?,
                None => break,
            }
        }
        self.answer_ready()?;
        self.deliver().await?;
        self.link.flush(self.settings.heartbeat).await?;
        Ok(())
    }

    async fn exec(&mut self, command: Command) -> Result<(), Stop> {
        match command {
            Command::Nop => {}
            Command::Identify(body) => self.identify(&body).await?,
            Command::Auth(secret) => self.auth(&secret).await?,
            Command::Sub { topic, channel } => {
                let who = self.principal().await?;
                let broker = &self.shared.broker;
                let sub = broker
                    .subscribe_when_ready(&who, &topic, &channel, self.settings.msg_timeout)
                    .await
                    .map_err(|e| sub_failed(&topic, &channel, &e))?;
                tracing::debug!(remote = %self.remote, %topic, %channel, consumer = sub.id(), "NSQ consumer subscribed");
                self.sub = Some(sub);
                self.state = State::Subscribed;
                self.reply(Reply::Response(Bytes::from_static(wire::OK)));
            }
            Command::Rdy(count) => self.rdy(count)?,
            Command::Fin(id) => self.settle("FIN", "E_FIN_FAILED", id, |sub, id| sub.fin(id)),
            Command::Req { id, delay_ms } => {
                // nsqd clamps a REQ delay into range rather than refusing it.
                let max = self.shared.config.max_req_timeout;
                let delay = Duration::from_millis(delay_ms).min(max);
                self.settle("REQ", "E_REQ_FAILED", id, |sub, id| sub.req(id, delay));
            }
            Command::Touch(id) => {
                self.settle("TOUCH", "E_TOUCH_FAILED", id, |sub, id| sub.touch(id))
            }
            Command::Pub { topic, body } => {
                self.publish_checked(
                    PubOp::Pub,
                    &topic,
                    vec![NewMessage::new(body)],
                    Duration::ZERO,
                )
                .await?;
            }
            Command::Mpub { topic, bodies } => {
                let messages = bodies.into_iter().map(NewMessage::new).collect();
                self.publish_checked(PubOp::Mpub, &topic, messages, Duration::ZERO)
                    .await?;
            }
            Command::Dpub {
                topic,
                delay_ms,
                body,
            } => {
                let delay = Duration::from_millis(delay_ms);
                self.publish_checked(PubOp::Dpub, &topic, vec![NewMessage::new(body)], delay)
                    .await?;
            }
            Command::Cls => {
                if let Some(sub) = &self.sub {
                    sub.close();
                }
                self.state = State::Closing;
                self.reply(Reply::Response(Bytes::from_static(wire::CLOSE_WAIT)));
            }
        }
        Ok(())
    }

    /// IDENTIFY: new settings, the reply, then the upgrades in nsqd's order, each confirmed
    /// by an `OK` sent over the upgraded stream.
    async fn identify(&mut self, body: &[u8]) -> Result<(), Stop> {
        let offer = Offer {
            auth_required: self.shared.auth.takes_secrets(),
            tls: self.shared.tls.is_some(),
            msg_timeout: self.shared.broker.config().msg_timeout,
        };
        let identified = identify::identify(body, &self.settings, &self.shared.config, offer)?;
        self.identified = true;
        if identified.settings.heartbeat != self.settings.heartbeat {
            self.heartbeat = heartbeat(identified.settings.heartbeat);
        }
        self.settings = identified.settings;
        tracing::debug!(remote = %self.remote, client_id = %self.settings.client_id, hostname = %self.settings.hostname, user_agent = %self.settings.user_agent, "NSQ IDENTIFY");
        // Whatever is owed goes out before the stream changes.
        self.drain().await?;
        wire::put_response(&mut self.link.out, &identified.reply);
        self.link.flush(self.settings.heartbeat).await?;
        let upgrades = identified.upgrades;
        if let (true, Some(config)) = (upgrades.tls, &self.shared.tls) {
            self.link.upgrade_tls(config.clone()).await?;
            // The identity of a verified client certificate, until an AUTH replaces it.
            let certificate = self.link.peer_certificate().and_then(certificate_identity);
            self.credentials = Credentials::new(
                Arc::clone(&self.shared.auth),
                Connection {
                    remote: self.remote,
                    tls: true,
                    certificate,
                },
            );
            self.upgraded().await?;
        }
        if upgrades.snappy {
            self.link.compress(Codec::snappy())?;
            self.upgraded().await?;
        }
        if let Some(level) = upgrades.deflate {
            self.link.compress(Codec::deflate(level))?;
            self.upgraded().await?;
        }
        Ok(())
    }

    async fn upgraded(&mut self) -> Result<(), Stop> {
        wire::put_response(&mut self.link.out, wire::OK);
        Ok(self.link.flush(self.settings.heartbeat).await?)
    }

    fn rdy(&mut self, count: u64) -> Result<(), NsqError> {
        // nsqd ignores RDY after CLS.
        if self.state == State::Closing {
            return Ok(());
        }
        let max = self.shared.config.max_rdy_count;
        let out_of_range = || {
            let count = count as i64;
            NsqError::fatal(
                "E_INVALID",
                format!("RDY count {count} out of range 0-{max}"),
            )
        };
        let count = u32::try_from(count)
            .ok()
            .filter(|&c| c <= max)
            .ok_or_else(out_of_range)?;
        if let Some(sub) = &self.sub {
            sub.set_rdy(count)
                .map_err(|e| NsqError::fatal("E_INVALID", error_chain(&e)))?;
        }
        Ok(())
    }

    /// FIN, REQ or TOUCH: refusals are not fatal, as in nsqd.
    fn settle(
        &mut self,
        verb: &str,
        code: &'static str,
        id: NsqId,
        op: impl FnOnce(&Subscription, crate::message::MessageId) -> Result<(), BrokerError>,
    ) {
        let Some(sub) = &self.sub else { return };
        let not_in_flight = || "ID not in flight".to_owned();
        let result = match id.offset() {
            Some(offset) => op(sub, sub.message_id(offset)).map_err(|e| match e {
                BrokerError::Settle {
                    source: SettleError::NotInFlight,
                    ..
                } => not_in_flight(),
                BrokerError::Settle {
                    source: SettleError::OtherConsumer,
                    ..
                } => "client does not own message".to_owned(),
                other => error_chain(&other),
            }),
            // Not an id this broker hands out.
            None => Err(not_in_flight()),
        };
        if let Err(why) = result {
            let e = NsqError::soft(code, format!("{verb} {id} failed {why}"));
            self.reply(Reply::Error(e));
        }
    }

    /// AUTH, as nsqd: once, before SUB, only with authentication that takes secrets. A
    /// refused secret is answered after the address's throttle delay, and closes the
    /// connection.
    async fn auth(&mut self, secret: &[u8]) -> Result<(), Stop> {
        if self.credentials.has_secret() {
            return Err(NsqError::fatal("E_INVALID", "AUTH already set").into());
        }
        if !self.shared.auth.takes_secrets() {
            return Err(NsqError::fatal("E_AUTH_DISABLED", "AUTH disabled").into());
        }
        let secret = String::from_utf8_lossy(secret).into_owned();
        match self.credentials.authenticate(secret).await {
            Ok(logged_in) => {
                let reply = serde_json::json!({
                    "identity": logged_in.principal.identity(),
                    "identity_url": logged_in.identity_url,
                    "permission_count": logged_in.permission_count,
                });
                let body = Bytes::from(reply.to_string());
                self.reply(Reply::Response(body));
                Ok(())
            }
            Err(e) => {
                self.shared.broker.count_auth_failure();
                tracing::warn!(target: "quiver::audit", remote = %self.remote, error = %e, "NSQ AUTH failed");
                let delay = self.shared.auth.throttle().delay(self.remote.ip());
                tokio::time::sleep(delay).await;
                // As nsqd, errors contacting the auth server are not told to the client.
                let e = match e {
                    AuthError::NoAuthorizations => {
                        NsqError::fatal("E_UNAUTHORIZED", "AUTH no authorizations found")
                    }
                    _ => NsqError::fatal("E_AUTH_FAILED", "AUTH failed"),
                };
                Err(e.into())
            }
        }
    }

    /// The connection's principal, asking the auth server again if its answer expired.
    async fn principal(&mut self) -> Result<Arc<Principal>, NsqError> {
        self.credentials.current().await.map_err(|e| {
            self.shared.broker.count_auth_failure();
            tracing::warn!(target: "quiver::audit", remote = %self.remote, error = %e, "NSQ auth refresh failed");
            NsqError::fatal("E_AUTH_FAILED", "AUTH failed")
        })
    }

    /// A publish with the connection's current principal.
    async fn publish_checked(
        &mut self,
        op: PubOp,
        topic: &TopicName,
        messages: Vec<NewMessage>,
        delay: Duration,
    ) -> Result<(), NsqError> {
        let who = self.principal().await?;
        self.publish(&who, op, topic, messages, delay).await
    }

    /// Appends in arrival order (waiting only for a topic's router), or on a cluster node
    /// forwards to the topic's leader; the reply waits for the confirmation.
    async fn publish(
        &mut self,
        who: &Principal,
        op: PubOp,
        topic: &TopicName,
        messages: Vec<NewMessage>,
        delay: Duration,
    ) -> Result<(), NsqError> {
        let published = self
            .shared
            .broker
            .append_anywhere(who, topic, messages, delay)
            .await
            .map_err(|e| denied(op.verb(), topic, "", &e).unwrap_or_else(|| op.failed(&e)))?;
        let mut confirm: Confirmation = Box::pin(published.confirmed());
        // Under most fsync policies the confirmation is ready already: answer now.
        if self.replies.is_empty() {
            if let Poll::Ready(result) = poll_now(&mut confirm) {
                result.map_err(|e| op.failed(&e))?;
                wire::put_response(&mut self.link.out, wire::OK);
                return Ok(());
            }
        }
        self.replies.push_back(Pending::Confirm { op, confirm });
        Ok(())
    }

    fn reply(&mut self, reply: Reply) {
        if self.replies.is_empty() {
            encode(&mut self.link.out, &reply);
        } else {
            self.replies.push_back(Pending::Ready(reply));
        }
    }

    /// Encodes the replies at the front that are ready. A fatal one is returned.
    fn answer_ready(&mut self) -> Result<(), NsqError> {
        while let Some(front) = self.replies.front_mut() {
            if let Pending::Confirm { confirm, .. } = front {
                let Poll::Ready(result) = poll_now(confirm) else {
                    return Ok(());
                };
                settle_front(&mut self.replies, result);
            }
            if let Some(Pending::Ready(reply)) = self.replies.pop_front() {
                encode(&mut self.link.out, &reply);
                if let Reply::Error(e) = reply {
                    if e.fatal {
                        return Err(e);
                    }
                }
            }
        }
        Ok(())
    }

    /// Answers everything owed, waiting for confirmations in order.
    async fn drain(&mut self) -> Result<(), NsqError> {
        loop {
            self.answer_ready()?;
            if self.replies.is_empty() {
                return Ok(());
            }
            let result = first_confirm(&mut self.replies).await;
            settle_front(&mut self.replies, result);
        }
    }

    /// Sends what the consumer's RDY allows: one take per batch, written once the output
    /// buffer fills, yielding between takes so the channel's other consumers get a turn.
    async fn deliver(&mut self) -> Result<(), LinkError> {
        let Some(sub) = &self.sub else { return Ok(()) };
        loop {
            self.taken.clear();
            if sub.take(TAKE_BATCH, &mut self.taken) == 0 {
                return Ok(());
            }
            for t in &self.taken {
                // nsqd's sample_rate: the message is taken from the channel for this
                // consumer but not sent; it is finished here so it is not redelivered.
                if self.sampler.skip(self.settings.sample_rate) {
                    let _ = sub.fin(sub.message_id(t.offset));
                    continue;
                }
                let m = &t.message;
                let id = NsqId::from_offset(t.offset);
                wire::put_message(&mut self.link.out, id, m.timestamp_ns, t.attempts, &m.body);
            }
            if self.link.out.len() >= self.settings.output_buffer_size {
                self.link.flush(self.settings.heartbeat).await?;
            }
            tokio::task::yield_now().await;
        }
    }

    /// Answers what is owed (the fatal error last), flushes and closes.
    async fn finish(&mut self, stop: Stop) {
        match &stop {
            Stop::Fatal(e) => {
                tracing::debug!(remote = %self.remote, error = %e, "NSQ connection closed on a fatal error");
                self.replies
                    .push_back(Pending::Ready(Reply::Error(e.clone())));
            }
            Stop::Link(e) => {
                tracing::debug!(remote = %self.remote, error = %e, "NSQ connection failed");
                return;
            }
            Stop::Silent => {
                tracing::info!(remote = %self.remote, "NSQ client missed two heartbeats; closing");
            }
            Stop::Ended(e) => {
                tracing::debug!(remote = %self.remote, reason = %e, "NSQ subscription ended");
                // A revoked permission is told, as nsqd tells a refused SUB; a deleted
                // channel or a shutdown closes bare, as nsqd does.
                if let Some(sub) = &self.sub {
                    if let Some(e) = denied("SUB", sub.topic(), sub.channel().as_str(), e) {
                        self.replies.push_back(Pending::Ready(Reply::Error(e)));
                    }
                }
            }
            Stop::Eof | Stop::ShuttingDown => {
                tracing::debug!(remote = %self.remote, why = ?stop, "NSQ connection closing");
            }
        }
        let owed = async {
            let _ = self.drain().await;
            let _ = self.link.flush(None).await;
        };
        let _ = tokio::time::timeout(FINISH_TIMEOUT, owed).await;
        self.link.shutdown().await;
    }
}

/// The connection state a command needs, checked before its parameters (as nsqd does).
#[derive(Debug, Clone, Copy)]
struct Gate {
    state: State,
    identified: bool,
    tls_missing: bool,
    heartbeats: bool,
}

impl Gate {
    fn check(&self, verb: Verb, raw: &[u8]) -> Result<(), NsqError> {
        let invalid = |text: String| Err(NsqError::fatal("E_INVALID", text));
        let word = String::from_utf8_lossy(raw);
        if verb != Verb::Identify && self.tls_missing {
            return invalid(format!("cannot {word} in current state (TLS required)"));
        }
        let allowed = match verb {
            // nsqd would take a second IDENTIFY; a second TLS upgrade cannot work.
            Verb::Identify => self.state == State::Init && !self.identified,
            Verb::Auth | Verb::Sub => self.state == State::Init,
            Verb::Rdy | Verb::Cls => self.state != State::Init,
            Verb::Fin | Verb::Req | Verb::Touch => self.state != State::Init,
            _ => true,
        };
        let allowed = allowed && !(verb == Verb::Cls && self.state == State::Closing);
        if !allowed {
            return invalid(format!("cannot {word} in current state"));
        }
        if verb == Verb::Sub && !self.heartbeats {
            return invalid("cannot SUB with heartbeats disabled".into());
        }
        Ok(())
    }
}

fn encode(out: &mut BytesMut, reply: &Reply) {
    match reply {
        Reply::Response(data) => wire::put_response(out, data),
        Reply::Error(e) => wire::put_error(out, e),
    }
}

fn poll_now(confirm: &mut Confirmation) -> Poll<Result<Range<u64>, BrokerError>> {
    confirm
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
}

/// Turns the confirmation at the front into its reply.
fn settle_front(replies: &mut VecDeque<Pending>, result: Result<Range<u64>, BrokerError>) {
    if let Some(front) = replies.front_mut() {
        if let Pending::Confirm { op, .. } = front {
            let reply = match result {
                Ok(_) => Reply::Response(Bytes::from_static(wire::OK)),
                Err(e) => Reply::Error(op.failed(&e)),
            };
            *front = Pending::Ready(reply);
        }
    }
}

/// Resolves with the first waiting confirmation; never, if the front is not one.
async fn first_confirm(replies: &mut VecDeque<Pending>) -> Result<Range<u64>, BrokerError> {
    match replies.front_mut() {
        Some(Pending::Confirm { confirm, .. }) => confirm.as_mut().await,
        _ => std::future::pending().await,
    }
}

async fn ended(sub: Option<&Subscription>) {
    match sub {
        Some(sub) => sub.ended().await,
        None => std::future::pending().await,
    }
}

async fn wait(sub: Option<&Subscription>) {
    match sub {
        Some(sub) => sub.wait().await,
        None => std::future::pending().await,
    }
}

async fn tick(heartbeat: &mut Option<Interval>) {
    match heartbeat {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

fn heartbeat(every: Option<Duration>) -> Option<Interval> {
    let every = every?;
    let mut interval = tokio::time::interval_at(Instant::now() + every, every);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    Some(interval)
}

/// The dice for `sample_rate`: xorshift, seeded per connection. Sampling needs no more.
#[derive(Debug)]
struct Sampler(u64);

impl Sampler {
    fn new(remote: SocketAddr) -> Sampler {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Sampler((nanos ^ u64::from(remote.port()).rotate_left(32)) | 1)
    }

    /// nsqd delivers when a draw from 0..100 is at most the rate; 0 delivers everything.
    fn skip(&mut self, rate: u8) -> bool {
        if rate == 0 {
            return false;
        }
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x % 100 > u64::from(rate)
    }
}
