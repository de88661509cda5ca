//! The broker's side of plugins: the questions it asks about routing and admission, and the
//! answers it acts on. It knows nothing of how the answers are made (WebAssembly components
//! bound by a rules file, in practice); whatever installs [`Hooks`] turns plugin faults into
//! answers by its failure policies, so every call here returns a decision.
//!
//! # When each hook runs
//! - [`Router::route`]: once per published message, before it is appended, under the topic's
//!   publish lock. The decision is stored with the message, so every channel, restarts and
//!   reloads included, sees the same one.
//! - [`Gate::admit`]: once per message per channel, when the channel's cursor reaches it
//!   (under the channel's lock, in log order). The cursor moving past a message is what
//!   records the decision; a requeued or recovered message is not asked again.
//!
//! Both may block the calling thread for as long as the plugin's call timeout allows, so the
//! broker calls a router or gate that has a [`Lane`] on the plugin pool (`pool.rs`), never
//! on an async worker.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::pool::Lane;

use crate::message::{ChannelName, Headers, MessageId, TopicName};

/// A message as a hook sees it, borrowed for one call.
#[derive(Debug, Clone, Copy)]
pub struct MessageRef<'a> {
    pub topic: &'a TopicName,
    /// The id it has (channel hooks) or will have once appended (routers).
    pub id: MessageId,
    /// Publish time, nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// Deliveries on the channel, the coming one included: 1 at a gate, 0 at a router.
    pub attempts: u16,
    pub headers: &'a Headers,
    pub body: &'a [u8],
}

/// Where a published message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Routing {
    /// Every channel of the topic, as if there were no router.
    All,
    /// These channels of the topic (created if missing), and a copy to each of these other
    /// topics, routed there by their own router. With no channels the topic keeps nothing.
    To {
        channels: Vec<ChannelName>,
        forward: Vec<TopicName>,
    },
    /// Not stored anywhere; the publish still succeeds.
    Drop,
    /// Stored in the topic's dead-letter topic instead, with `quiver-dead-reason: reason`.
    DeadLetter { reason: String },
    /// The whole publish is refused with this reason, and nothing of it is stored.
    Reject { reason: String },
}

/// What a channel does with a message its cursor reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Deliver it on this channel.
    Keep,
    /// Not for this channel: the cursor moves past it.
    Skip,
    /// Copy it to the channel's dead-letter topic, with `quiver-dead-reason: reason`.
    DeadLetter { reason: String },
}

/// A router's or gate's answer for one message, or why it has none yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision<T> {
    Made(T),
    /// The plugin is restarting after a fault: ask again after this long. Only answered
    /// when the caller may wait; otherwise the failure policy decides.
    Restarting(Duration),
}

/// How long the routing of one publish may take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteLimits {
    /// CPU time all the router's calls for one publish may use together; the messages not
    /// routed by then get [`Router::overrun`].
    pub publish_timeout: Duration,
    /// How long a publish may wait for a restarting router before the failure policy
    /// applies to its messages.
    pub max_wait: Duration,
}

impl Default for RouteLimits {
    fn default() -> Self {
        RouteLimits {
            publish_timeout: Duration::MAX,
            max_wait: Duration::ZERO,
        }
    }
}

/// A topic's router.
pub trait Router: Send + Sync + fmt::Debug {
    /// Where `message` goes. `may_wait`: the caller can come back later, so a restarting
    /// plugin may answer [`Decision::Restarting`] instead of its failure policy.
    fn route(&self, message: &MessageRef<'_>, may_wait: bool) -> Decision<Routing>;

    /// What a message gets when the publish's routing ran out of time: the failure policy.
    fn overrun(&self) -> Routing {
        Routing::All
    }

    fn limits(&self) -> RouteLimits {
        RouteLimits::default()
    }

    /// The pool lane its calls run on; `None` for a router cheap enough to run inline.
    fn lane(&self) -> Option<&Arc<Lane>> {
        None
    }

    /// Counts messages routed by [`Router::overrun`].
    fn count_overrun(&self, _messages: usize) {}
}

/// A channel's filters and samplers, applied in order.
pub trait Gate: Send + Sync + fmt::Debug {
    fn admit(&self, message: &MessageRef<'_>) -> Admission;

    /// [`Gate::admit`] for each of `messages` in turn, appending one admission per message
    /// to `out`. Implementations may decide them together, which is cheaper per message.
    fn admit_batch(&self, messages: &[MessageRef<'_>], out: &mut Vec<Admission>) {
        out.extend(messages.iter().map(|m| self.admit(m)));
    }

    /// Decides `messages` (in log order) into `judging.admissions`, resuming where an earlier
    /// call on the same messages stopped. Returns `None` once every message is decided, or
    /// how long to wait before calling again when a restarting plugin holds some of them
    /// (only if `may_wait`; otherwise the failure policy decides them).
    fn judge(
        &self,
        messages: &[MessageRef<'_>],
        judging: &mut Judging,
        may_wait: bool,
    ) -> Option<Duration> {
        let _ = may_wait;
        judging.admissions.clear();
        self.admit_batch(messages, &mut judging.admissions);
        None
    }

    /// The pool lane its calls run on; `None` for a gate cheap enough to run inline.
    fn lane(&self) -> Option<&Arc<Lane>> {
        None
    }

    /// Longest a message waits for a restarting plugin of this gate.
    fn max_wait(&self) -> Duration {
        Duration::ZERO
    }
}

/// A batch being decided by a gate's chain, kept across waits for a restarting plugin.
#[derive(Debug, Default, Clone)]
pub struct Judging {
    /// One per message once the judging is done; meanwhile `Keep` for messages no plugin
    /// refused yet.
    pub admissions: Vec<Admission>,
    /// The chain position deciding now, and the messages (indexes) it still has to decide.
    pub stage: usize,
    pub todo: Vec<usize>,
    /// Messages the current stage kept: the next stage decides them.
    pub passed: Vec<usize>,
    /// Set once the judging started (`admissions` sized, `todo` filled).
    pub started: bool,
}

impl Judging {
    /// Where the judging is: changes whenever a message is decided by a stage.
    pub fn left(&self) -> (usize, usize, bool) {
        (self.stage, self.todo.len(), self.started)
    }
}

/// What the current rules say about topics and channels. Implementations swap their rules
/// atomically; each lookup answers from one rule set.
pub trait Hooks: Send + Sync + fmt::Debug {
    /// The router bound to `topic`, if any. Looked up once per publish.
    fn router(&self, topic: &TopicName) -> Option<Arc<dyn Router>>;

    /// The filters and samplers bound to a channel, if any. Looked up once per batch a
    /// consumer takes.
    fn gate(&self, topic: &TopicName, channel: &ChannelName) -> Option<Arc<dyn Gate>>;

    /// Where a channel's dead letters go. None: `<topic>.dead`.
    fn dead_letter_topic(&self, topic: &TopicName, channel: &ChannelName) -> Option<TopicName>;
}
