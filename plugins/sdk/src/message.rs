//! The message a decision is about.
//!
//! Inside a plugin it wraps the host's `borrow<message>` resource: every accessor is one call
//! into the broker, which copies only what was asked for (`body_len` copies nothing). In
//! host-side unit tests it is a local value made with [`Message::builder`], so a plugin's
//! `keep` or `route` runs unchanged under `cargo test`.

use crate::__private::types::{Batch, Message as HostMessage};

/// A message being published (routers) or about to be delivered on a channel (filters and
/// samplers). Valid only during the call it is passed to.
#[derive(Debug)]
pub struct Message<'a> {
    repr: Repr<'a>,
}

#[derive(Debug)]
enum Repr<'a> {
    Host(&'a HostMessage),
    /// A message of a batch, by its index.
    Batch(&'a Batch, u32),
    Local(Box<Local>),
}

/// A message held in the plugin's own memory (tests).
#[derive(Debug, Clone, Default)]
struct Local {
    topic: String,
    id: String,
    timestamp_ns: u64,
    attempts: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl<'a> Message<'a> {
    /// Wraps the host's resource; used by the export glue.
    #[doc(hidden)]
    pub fn from_host(msg: &'a HostMessage) -> Self {
        Message {
            repr: Repr::Host(msg),
        }
    }

    /// A message of the host's batch; used by the export glue.
    #[doc(hidden)]
    pub fn from_batch(batch: &'a Batch, index: u32) -> Self {
        Message {
            repr: Repr::Batch(batch, index),
        }
    }

    /// The topic it was published to.
    pub fn topic(&self) -> String {
        match &self.repr {
            Repr::Host(m) => m.topic(),
            Repr::Batch(b, i) => b.topic(*i),
            Repr::Local(m) => m.topic.clone(),
        }
    }

    /// Its id: 32 lowercase hex digits, the same on every channel.
    pub fn id(&self) -> String {
        match &self.repr {
            Repr::Host(m) => m.id(),
            Repr::Batch(b, i) => b.id(*i),
            Repr::Local(m) => m.id.clone(),
        }
    }

    /// Publish time, nanoseconds since the Unix epoch.
    pub fn timestamp_ns(&self) -> u64 {
        match &self.repr {
            Repr::Host(m) => m.timestamp_ns(),
            Repr::Batch(b, i) => b.timestamp_ns(*i),
            Repr::Local(m) => m.timestamp_ns,
        }
    }

    /// Deliveries so far on this channel, counting the coming one (0 for routers).
    pub fn attempts(&self) -> u16 {
        match &self.repr {
            Repr::Host(m) => m.attempts(),
            Repr::Batch(b, i) => b.attempts(*i),
            Repr::Local(m) => m.attempts,
        }
    }

    /// The first header with this name, if any. Names compare exactly (case matters).
    pub fn header(&self, name: &str) -> Option<String> {
        match &self.repr {
            Repr::Host(m) => m.header(name),
            Repr::Batch(b, i) => b.header(*i, name),
            Repr::Local(m) => m.first(name).map(str::to_owned),
        }
    }

    /// Whether a header with this name is present, even with an empty value. Copies nothing
    /// into the plugin.
    pub fn has_header(&self, name: &str) -> bool {
        match &self.repr {
            Repr::Host(m) => m.has_header(name),
            Repr::Batch(b, i) => b.has_header(*i, name),
            Repr::Local(m) => m.first(name).is_some(),
        }
    }

    /// Whether the first header with this name equals `value` (false when there is none).
    /// Copies nothing into the plugin, so it is cheaper than comparing [`Message::header`].
    pub fn header_eq(&self, name: &str, value: &str) -> bool {
        match &self.repr {
            Repr::Host(m) => m.header_eq(name, value),
            Repr::Batch(b, i) => b.header_eq(*i, name, value),
            Repr::Local(m) => m.first(name) == Some(value),
        }
    }

    /// The index in `values` of the first value that the first header with this name
    /// equals; `None` when the header is missing or equals none of them. Copies nothing into
    /// the plugin: [`Message::header_eq`] for a set of values.
    pub fn header_index(&self, name: &str, values: &[String]) -> Option<usize> {
        match &self.repr {
            Repr::Host(m) => m.header_index(name, values).map(|i| i as usize),
            Repr::Batch(b, i) => b.header_index(*i, name, values).map(|i| i as usize),
            Repr::Local(m) => {
                let found = m.first(name)?;
                values.iter().position(|v| v == found)
            }
        }
    }

    /// Every header, in order. One host call; prefer [`Message::header`] for one or two.
    pub fn headers(&self) -> Vec<(String, String)> {
        match &self.repr {
            Repr::Host(m) => m.headers(),
            Repr::Batch(b, i) => b.headers(*i),
            Repr::Local(m) => m.headers.clone(),
        }
    }

    /// The body, copied into the plugin. Prefer [`Message::body_len`] when the size is enough.
    pub fn body(&self) -> Vec<u8> {
        match &self.repr {
            Repr::Host(m) => m.body(),
            Repr::Batch(b, i) => b.body(*i),
            Repr::Local(m) => m.body.clone(),
        }
    }

    /// The body's length in bytes, without copying it.
    pub fn body_len(&self) -> u32 {
        match &self.repr {
            Repr::Host(m) => m.body_len(),
            Repr::Batch(b, i) => b.body_len(*i),
            // A local body over 4 GiB is a test's mistake; saturate rather than wrap.
            Repr::Local(m) => u32::try_from(m.body.len()).unwrap_or(u32::MAX),
        }
    }
}

impl Local {
    fn first(&self, name: &str) -> Option<&str> {
        let mut headers = self.headers.iter();
        headers.find(|(n, _)| n == name).map(|(_, v)| v.as_str())
    }
}

impl Message<'static> {
    /// Starts a local message, for unit tests of a plugin's logic on the host.
    ///
    /// ```
    /// let msg = quiver_plugin::Message::builder()
    ///     .topic("orders")
    ///     .header("type", "invoice")
    ///     .body(r#"{"total": 3}"#)
    ///     .build();
    /// assert_eq!(msg.header("type").as_deref(), Some("invoice"));
    /// ```
    pub fn builder() -> MessageBuilder {
        MessageBuilder::default()
    }
}

/// Builds a local [`Message`] (tests). Unset fields are empty or zero; the id defaults to
/// 32 zeros.
#[derive(Debug, Clone, Default)]
pub struct MessageBuilder {
    local: Local,
}

impl MessageBuilder {
    /// Sets the topic.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.local.topic = topic.into();
        self
    }

    /// Sets the id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.local.id = id.into();
        self
    }

    /// Sets the publish time.
    pub fn timestamp_ns(mut self, timestamp_ns: u64) -> Self {
        self.local.timestamp_ns = timestamp_ns;
        self
    }

    /// Sets the delivery count.
    pub fn attempts(mut self, attempts: u16) -> Self {
        self.local.attempts = attempts;
        self
    }

    /// Appends a header (names may repeat; [`Message::header`] returns the first).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.local.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the body.
    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.local.body = body.into();
        self
    }

    /// The message.
    pub fn build(mut self) -> Message<'static> {
        if self.local.id.is_empty() {
            self.local.id = "0".repeat(32);
        }
        Message {
            repr: Repr::Local(Box::new(self.local)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_message_returns_first_header_of_a_name() {
        let msg = Message::builder()
            .header("k", "1")
            .header("k", "2")
            .body("abc")
            .build();
        assert_eq!(msg.header("k").as_deref(), Some("1"));
        assert_eq!(msg.header("K"), None);
        assert_eq!(msg.headers().len(), 2);
        assert_eq!(msg.body_len(), 3);
        assert_eq!(msg.id().len(), 32);
    }
}
