//! The vocabulary every layer shares: validated names, message ids, headers and messages.
//!
//! These types are parsed once, at the edge (the codec, the HTTP API, the CLI), and trusted
//! everywhere after that: a `TopicName` in hand is always a valid topic name.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

/// Longest topic or channel name a client may use (NSQ's limit).
pub const MAX_NAME_LEN: usize = 64;
/// Largest message body the broker accepts.
pub const MAX_BODY_LEN: usize = 1 << 20;
/// Largest encoded header block (keys, values and their length prefixes).
pub const MAX_HEADERS_LEN: usize = 64 << 10;
/// Suffix that marks a topic or channel as in-memory and short-lived.
pub const EPHEMERAL_SUFFIX: &str = "#ephemeral";
/// Suffix of the dead-letter topic that receives a topic's exhausted messages.
pub const DEAD_LETTER_SUFFIX: &str = ".dead";

/// The header that carries a publisher's message id: within its topic's dedup window, a
/// second publish with the same id is confirmed as a duplicate and not stored again.
pub const MSG_ID_HEADER: &str = "quiver-msg-id";
/// Longest message id, in bytes.
pub const MAX_MSG_ID_LEN: usize = 128;
/// The header ordered channels read a message's order key from, unless they name another.
pub const ORDER_KEY_HEADER: &str = "quiver-order-key";

/// Why a name, header block or body was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidInput {
    #[error("invalid {kind} name {name:?}: {why}")]
    Name {
        kind: &'static str,
        name: String,
        why: &'static str,
    },
    #[error("headers take {len} bytes, over the {max}-byte limit")]
    HeadersTooLarge { len: usize, max: usize },
    #[error("header name is empty")]
    EmptyHeaderName,
    #[error("body is {len} bytes, over the {max}-byte limit")]
    BodyTooLarge { len: usize, max: usize },
    #[error("message id ({MSG_ID_HEADER}) is {len} bytes: it must be 1 to {MAX_MSG_ID_LEN}")]
    BadMsgId { len: usize },
}

/// Checks a message id: 1 to [`MAX_MSG_ID_LEN`] bytes.
pub fn validate_msg_id(id: &str) -> Result<(), InvalidInput> {
    if id.is_empty() || id.len() > MAX_MSG_ID_LEN {
        return Err(InvalidInput::BadMsgId { len: id.len() });
    }
    Ok(())
}

/// A random message id: 128 bits as 32 hex digits, for publishers that want every publish
/// deduplicated without naming their messages.
pub fn random_msg_id() -> String {
    let mut bytes = [0u8; 16];
    // The system RNG only fails without any entropy source; the clock and a counter still
    // make the id unique within this process.
    if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
        static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        bytes[..8].copy_from_slice(&now.to_be_bytes());
        bytes[8..].copy_from_slice(&n.to_be_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

macro_rules! name_type {
    ($(#[$doc:meta])* $ty:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $ty(Arc<str>);

        impl $ty {
            /// Validates `name`: 1 to 64 bytes of `[A-Za-z0-9._-]`, optionally ending in
            /// `#ephemeral`.
            pub fn new(name: &str) -> Result<Self, InvalidInput> {
                validate_name($kind, name)?;
                Ok(Self(name.into()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// True for `#ephemeral` names, which live in memory only and go away with their
            /// last user.
            pub fn is_ephemeral(&self) -> bool {
                self.0.ends_with(EPHEMERAL_SUFFIX)
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Debug::fmt(&*self.0, f)
            }
        }

        impl std::str::FromStr for $ty {
            type Err = InvalidInput;
            fn from_str(s: &str) -> Result<Self, InvalidInput> {
                Self::new(s)
            }
        }
    };
}

name_type!(
    /// A validated topic name.
    TopicName,
    "topic"
);
name_type!(
    /// A validated channel name.
    ChannelName,
    "channel"
);

impl TopicName {
    /// The topic that receives this topic's dead-lettered messages: `<topic>.dead`, with the
    /// `#ephemeral` suffix kept last (`t#ephemeral` → `t.dead#ephemeral`).
    ///
    /// A dead-letter topic is its own dead-letter topic, so names never grow past
    /// [`MAX_NAME_LEN`] plus the suffixes: messages that keep failing there stay there.
    pub fn dead_letter(&self) -> TopicName {
        let (base, ephemeral) = split_ephemeral(&self.0);
        if base.ends_with(DEAD_LETTER_SUFFIX) {
            return self.clone();
        }
        TopicName(format!("{base}{DEAD_LETTER_SUFFIX}{ephemeral}").into())
    }
}

/// Splits `name#ephemeral` into `("name", "#ephemeral")`; other names into `(name, "")`.
fn split_ephemeral(name: &str) -> (&str, &str) {
    match name.strip_suffix(EPHEMERAL_SUFFIX) {
        Some(base) => (base, EPHEMERAL_SUFFIX),
        None => (name, ""),
    }
}

fn validate_name(kind: &'static str, name: &str) -> Result<(), InvalidInput> {
    let invalid = |why| InvalidInput::Name {
        kind,
        name: name.chars().take(80).collect(),
        why,
    };
    let (base, _) = split_ephemeral(name);
    if base.is_empty() {
        return Err(invalid("must not be empty"));
    }
    if !base
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(invalid("only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"));
    }
    // Names become directory names in the data directory.
    if name == "." || name == ".." {
        return Err(invalid("must not be '.' or '..'"));
    }
    // The limit counts `#ephemeral` (as NSQ does) but not a dead-letter topic's `.dead`.
    let dead = kind == "topic" && base.ends_with(DEAD_LETTER_SUFFIX);
    let counted = name.len() - if dead { DEAD_LETTER_SUFFIX.len() } else { 0 };
    if counted > MAX_NAME_LEN {
        return Err(invalid("longer than 64 bytes"));
    }
    Ok(())
}

/// A message id: 16 bytes, unique within a broker's data directory.
///
/// The first 8 bytes name the topic's incarnation (a random value chosen when the topic is
/// created), the last 8 its offset in the topic's log. Every channel of a topic sees the same id
/// for the same message, as in NSQ.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub [u8; 16]);

impl MessageId {
    pub fn new(incarnation: u64, offset: u64) -> Self {
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&incarnation.to_be_bytes());
        id[8..].copy_from_slice(&offset.to_be_bytes());
        MessageId(id)
    }

    pub fn incarnation(&self) -> u64 {
        u64::from_be_bytes(self.half(0))
    }

    pub fn offset(&self) -> u64 {
        u64::from_be_bytes(self.half(8))
    }

    fn half(&self, at: usize) -> [u8; 8] {
        let mut half = [0u8; 8];
        half.copy_from_slice(&self.0[at..at + 8]);
        half
    }

    /// Parses the 32-character hex form printed by `Display`.
    pub fn parse_hex(text: &str) -> Option<Self> {
        if text.len() != 32 {
            return None;
        }
        let mut id = [0u8; 16];
        for (i, byte) in id.iter_mut().enumerate() {
            *byte = u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(MessageId(id))
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

/// How a channel orders its deliveries: at most one message of a key in flight at a time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OrderBy {
    /// Messages are delivered in parallel, in no promised order.
    #[default]
    Unordered,
    /// The whole channel is one key: strictly one message at a time.
    Channel,
    /// The key is the value of this header; messages without it are not ordered.
    Key(HeaderName),
}

impl OrderBy {
    /// Reads an optional `ordering` with its optional `order_key_header`, as the rules file
    /// and the HTTP APIs take them: None when neither is given; a header without an
    /// ordering is refused.
    pub fn parse_setting(
        ordering: Option<&str>,
        header: Option<&str>,
    ) -> Result<Option<OrderBy>, String> {
        match ordering {
            Some(ordering) => OrderBy::parse(ordering, header).map(Some),
            None if header.is_some() => Err(
                "order_key_header applies to ordering = \"key\" only; ordering is missing".into(),
            ),
            None => Ok(None),
        }
    }

    /// Reads `ordering` (`none`, `channel` or `key`) and `order_key_header` as the rules file
    /// and the HTTP APIs take them. The header is for `key` only, where it defaults to
    /// [`ORDER_KEY_HEADER`].
    pub fn parse(ordering: &str, header: Option<&str>) -> Result<OrderBy, String> {
        let order = match ordering {
            "none" => OrderBy::Unordered,
            "channel" => OrderBy::Channel,
            "key" => {
                let name = header.unwrap_or(ORDER_KEY_HEADER);
                return HeaderName::new(name).map(OrderBy::Key).ok_or_else(|| {
                    format!(
                        "order_key_header must be 1 to {} bytes, got {}",
                        HeaderName::MAX_LEN,
                        name.len()
                    )
                });
            }
            other => {
                return Err(format!(
                    "ordering must be \"none\", \"channel\" or \"key\", not {other:?}"
                ))
            }
        };
        match header {
            Some(_) => Err(format!(
                "order_key_header applies to ordering = \"key\" only, not {ordering:?}"
            )),
            None => Ok(order),
        }
    }
}

/// `none`, `channel`, or `key:<header>`, as stats show it.
impl std::fmt::Display for OrderBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OrderBy::Unordered => f.write_str("none"),
            OrderBy::Channel => f.write_str("channel"),
            OrderBy::Key(header) => write!(f, "key:{}", header.as_str()),
        }
    }
}

/// A header name that an [`OrderBy`] reads, interned so that options stay `Copy`: there are
/// only as many as operators configure.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct HeaderName(&'static str);

impl HeaderName {
    /// Longest header name a channel can be ordered by.
    pub const MAX_LEN: usize = 255;

    /// None when the name is empty or longer than [`HeaderName::MAX_LEN`].
    pub fn new(name: &str) -> Option<HeaderName> {
        static NAMES: std::sync::Mutex<Vec<&'static str>> = std::sync::Mutex::new(Vec::new());
        if name.is_empty() || name.len() > Self::MAX_LEN {
            return None;
        }
        let mut names = NAMES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(&known) = names.iter().find(|&&known| known == name) {
            return Some(HeaderName(known));
        }
        let leaked: &'static str = Box::leak(name.to_owned().into_boxed_str());
        names.push(leaked);
        Some(HeaderName(leaked))
    }

    pub fn as_str(self) -> &'static str {
        self.0
    }
}

impl std::fmt::Debug for HeaderName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

/// Options of a channel that its creator or the rules file may set. `None` leaves the
/// channel's current value (or, on creation, the broker's default).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ChannelSettings {
    /// Deliveries before a message is dead-lettered; 0 means unlimited.
    pub max_attempts: Option<u16>,
    /// Deadline for consumers that ask for none.
    pub msg_timeout: Option<std::time::Duration>,
    pub ordering: Option<OrderBy>,
}

/// Ordered string key/value pairs. Keys may repeat; order is kept.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Headers(Vec<(String, String)>);

impl Headers {
    pub fn new() -> Self {
        Headers(Vec::new())
    }

    /// Validates the total size and that no key is empty.
    pub fn from_pairs(pairs: Vec<(String, String)>) -> Result<Self, InvalidInput> {
        let headers = Headers(pairs);
        headers.validate()?;
        Ok(headers)
    }

    pub fn validate(&self) -> Result<(), InvalidInput> {
        if self.0.iter().any(|(k, _)| k.is_empty()) {
            return Err(InvalidInput::EmptyHeaderName);
        }
        let len = self.encoded_len();
        if len > MAX_HEADERS_LEN {
            return Err(InvalidInput::HeadersTooLarge {
                len,
                max: MAX_HEADERS_LEN,
            });
        }
        Ok(())
    }

    /// Size of the header block on the wire: a u16 count, then u16-length-prefixed strings.
    pub fn encoded_len(&self) -> usize {
        2 + self
            .0
            .iter()
            .map(|(k, v)| 4 + k.len() + v.len())
            .sum::<usize>()
    }

    /// Appends a pair without validating; callers validate once the block is complete.
    pub fn push(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.push((key.into(), value.into()));
    }

    /// Replaces every value of `key` with one `value`, at the place of the first.
    pub fn set(&mut self, key: &str, value: impl Into<String>) {
        let value = value.into();
        match self.0.iter().position(|(k, _)| k == key) {
            Some(at) => {
                self.0[at].1 = value;
                let mut i = 0;
                self.0.retain(|(k, _)| {
                    i += 1;
                    i - 1 == at || k != key
                });
            }
            None => self.0.push((key.to_owned(), value)),
        }
    }

    /// The first value for `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl fmt::Debug for Headers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// What a publisher sends: headers and body. The broker adds id, timestamp and attempts.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NewMessage {
    pub headers: Headers,
    pub body: Bytes,
}

impl NewMessage {
    pub fn new(body: impl Into<Bytes>) -> Self {
        NewMessage {
            headers: Headers::new(),
            body: body.into(),
        }
    }

    pub fn with_header(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push(key, value);
        self
    }

    /// Sets the message id ([`MSG_ID_HEADER`]), replacing any: a publish of the same id
    /// within the topic's dedup window is confirmed as a duplicate and not stored again.
    pub fn with_msg_id(mut self, id: impl Into<String>) -> Self {
        self.headers.set(MSG_ID_HEADER, id);
        self
    }

    /// Gives the message a random id ([`random_msg_id`]) unless it has one.
    pub fn with_auto_msg_id(mut self) -> Self {
        if self.msg_id().is_none() {
            self.headers.push(MSG_ID_HEADER, random_msg_id());
        }
        self
    }

    /// Sets the order key ([`ORDER_KEY_HEADER`]), replacing any: an ordered channel delivers
    /// the messages of one key one at a time, in publish order.
    pub fn with_order_key(mut self, key: impl Into<String>) -> Self {
        self.headers.set(ORDER_KEY_HEADER, key);
        self
    }

    /// The message id, if it has one.
    pub fn msg_id(&self) -> Option<&str> {
        self.headers.get(MSG_ID_HEADER)
    }

    pub fn validate(&self) -> Result<(), InvalidInput> {
        self.headers.validate()?;
        if self.body.len() > MAX_BODY_LEN {
            return Err(InvalidInput::BodyTooLarge {
                len: self.body.len(),
                max: MAX_BODY_LEN,
            });
        }
        Ok(())
    }
}

/// A message as a topic's log stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredMessage {
    /// Publish time, nanoseconds since the Unix epoch.
    pub timestamp_ns: u64,
    /// Not deliverable before this wall-clock time (milliseconds since the Unix epoch); 0 means
    /// at once. Set by DPUB.
    pub deliver_at_ms: u64,
    pub headers: Headers,
    pub body: Bytes,
    /// The channels a topic's router chose, stored with the message so that every channel
    /// (and every restart) sees one decision. None: every channel of the topic.
    pub route: Option<Route>,
}

/// The channels a router chose for a message.
pub type Route = std::sync::Arc<[ChannelName]>;

impl StoredMessage {
    /// True if the message is for `channel`: there is no route, or the route names it.
    pub fn is_for(&self, channel: &ChannelName) -> bool {
        self.route.as_ref().is_none_or(|r| r.contains(channel))
    }
}

/// A message as a consumer receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    pub id: MessageId,
    pub timestamp_ns: u64,
    /// How many times this message has been delivered on this channel, this one included.
    pub attempts: u16,
    pub headers: Headers,
    pub body: Bytes,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_nsq_rules() {
        assert!(TopicName::new("orders.eu_1-a").is_ok());
        assert!(TopicName::new("t#ephemeral").unwrap().is_ephemeral());
        assert!(TopicName::new("").is_err());
        assert!(TopicName::new("#ephemeral").is_err());
        assert!(TopicName::new("a b").is_err());
        assert!(TopicName::new("..").is_err());
        assert!(ChannelName::new(".").is_err());
        assert!(TopicName::new("...").is_ok());
        assert!(ChannelName::new(&"x".repeat(65)).is_err());
        assert!(TopicName::new(&"x".repeat(64)).is_ok());
        let ephemeral = |n| format!("{}{EPHEMERAL_SUFFIX}", "x".repeat(n));
        assert!(ChannelName::new(&ephemeral(54)).is_ok());
        assert!(
            ChannelName::new(&ephemeral(55)).is_err(),
            "#ephemeral counts toward 64"
        );
    }

    #[test]
    fn dead_letter_names_may_exceed_the_limit_by_their_suffix_only() {
        let long = TopicName::new(&"x".repeat(64)).unwrap();
        let dead = long.dead_letter();
        assert_eq!(TopicName::new(dead.as_str()).unwrap(), dead);
        assert_eq!(dead.dead_letter(), dead, "a dead-letter topic is its own");
        assert!(TopicName::new(&format!("{}.dead.dead", "x".repeat(64))).is_err());
        assert!(ChannelName::new(&format!("{}.dead", "x".repeat(64))).is_err());
    }

    #[test]
    fn dead_letter_of_an_ephemeral_topic_is_ephemeral_and_valid() {
        let dead = TopicName::new("t#ephemeral").unwrap().dead_letter();
        assert_eq!(dead.as_str(), "t.dead#ephemeral");
        assert!(dead.is_ephemeral());
        assert_eq!(TopicName::new(dead.as_str()).unwrap(), dead);
    }

    #[test]
    fn message_id_round_trips_through_hex() {
        let id = MessageId::new(0xdead_beef, 42);
        assert_eq!(id.offset(), 42);
        assert_eq!(id.incarnation(), 0xdead_beef);
        assert_eq!(MessageId::parse_hex(&id.to_string()), Some(id));
        assert_eq!(MessageId::parse_hex("zz"), None);
    }

    #[test]
    fn headers_are_size_checked() {
        let big = Headers::from_pairs(vec![("k".into(), "v".repeat(MAX_HEADERS_LEN))]);
        assert!(matches!(big, Err(InvalidInput::HeadersTooLarge { .. })));
        assert!(Headers::from_pairs(vec![(String::new(), "v".into())]).is_err());
    }
}
