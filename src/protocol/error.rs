//! Wire errors: what the codec refuses, and the typed error frame a peer receives.

use crate::message::InvalidInput;

/// Why bytes could not become a frame or a frame could not become a command or reply.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame length is zero")]
    Empty,
    #[error("frame of {len} bytes is over the {max}-byte limit")]
    TooLarge { len: usize, max: usize },
    #[error("unknown frame type 0x{kind:02x}")]
    UnknownType { kind: u8 },
    #[error("frame ends inside the {what}")]
    Truncated { what: &'static str },
    #[error("{extra} bytes left over after the frame's last field")]
    TrailingBytes { extra: usize },
    #[error("{what} is not UTF-8")]
    NotUtf8 { what: &'static str },
    #[error("{0}")]
    Invalid(#[source] InvalidInput),
    #[error("{what} must not be {value}")]
    OutOfRange { what: &'static str, value: u64 },
}

impl FrameError {
    /// The error frame a peer gets for this decoding failure.
    pub fn to_wire(&self, seq: u64) -> WireError {
        let code = match self {
            FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
            FrameError::UnknownType { .. } => ErrorCode::UnknownFrame,
            FrameError::Invalid(InvalidInput::Name { kind: "topic", .. }) => ErrorCode::BadTopic,
            FrameError::Invalid(InvalidInput::Name { .. }) => ErrorCode::BadChannel,
            FrameError::Invalid(_) => ErrorCode::BadMessage,
            _ => ErrorCode::BadFrame,
        };
        WireError::new(code, seq, self.to_string())
    }
}

/// Error codes carried in ERROR frames. The numbers are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum ErrorCode {
    /// The frame could not be parsed. Fatal: the stream's framing can't be trusted.
    BadFrame = 1,
    /// The length prefix is over `MAX_FRAME_LEN`. Fatal.
    FrameTooLarge = 2,
    /// The type byte is not one this version knows. Fatal.
    UnknownFrame = 3,
    /// A topic name is invalid.
    BadTopic = 4,
    /// A channel name is invalid.
    BadChannel = 5,
    /// A message's headers or body are invalid or too large.
    BadMessage = 6,
    /// A well-formed command that is not valid here: a second SUB, RDY over the limit, a
    /// timeout out of range, a publish on a subscription stream.
    Invalid = 7,
    /// FIN of an id that is not in flight for this consumer.
    FinFailed = 8,
    /// REQ of an id that is not in flight for this consumer, or a delay out of range.
    ReqFailed = 9,
    /// TOUCH of an id that is not in flight for this consumer.
    TouchFailed = 10,
    /// The broker could not store the publish; nothing of it was kept.
    PubFailed = 11,
    /// The topic or channel named by an admin request does not exist.
    NotFound = 12,
    /// The broker is shutting down. Fatal.
    ShuttingDown = 13,
    /// An unexpected broker error.
    Internal = 14,
    /// The broker's disk is full: nothing of the publish was kept. Retry later; the broker
    /// recovers by itself once space returns.
    DiskFull = 15,
    /// A topic's router routed a message nowhere and its `unrouted` policy is `reject`:
    /// nothing of the publish was kept.
    Unrouted = 16,
    /// The caller may not do this: no grant gives its identity the permission (or it
    /// presented no credentials and the anonymous identity has none). Not fatal: the stream
    /// goes on; a refused SUB ends its stream.
    Unauthorized = 17,
    /// AUTH with a token or secret that was not accepted, or an auth server that could not be
    /// asked. Fatal for the stream it came on.
    AuthFailed = 18,
    /// In a cluster: this node does not lead the topic. The message starts with
    /// `leader=HOST:PORT node=ID` (the leader's QUIC address, `leader=?` when it has not
    /// advertised one yet), then says why in words. Not fatal: connect to the leader and
    /// send the request again; a refused SUB ends its stream.
    NotLeader = 19,
    /// In a cluster: the topic has no leader right now (an election, or it is being
    /// created). Not fatal; retry shortly, on this node or another.
    Unavailable = 20,
}

impl ErrorCode {
    pub fn from_u16(code: u16) -> Option<Self> {
        use ErrorCode::*;
        Some(match code {
            1 => BadFrame,
            2 => FrameTooLarge,
            3 => UnknownFrame,
            4 => BadTopic,
            5 => BadChannel,
            6 => BadMessage,
            7 => Invalid,
            8 => FinFailed,
            9 => ReqFailed,
            10 => TouchFailed,
            11 => PubFailed,
            12 => NotFound,
            13 => ShuttingDown,
            14 => Internal,
            15 => DiskFull,
            16 => Unrouted,
            17 => Unauthorized,
            18 => AuthFailed,
            19 => NotLeader,
            20 => Unavailable,
            _ => return None,
        })
    }

    /// Whether the stream is closed after this error. Framing errors are fatal because the
    /// next frame boundary can't be found; everything else leaves the stream usable.
    pub fn is_fatal(self) -> bool {
        matches!(
            self,
            ErrorCode::BadFrame
                | ErrorCode::FrameTooLarge
                | ErrorCode::UnknownFrame
                | ErrorCode::ShuttingDown
                | ErrorCode::AuthFailed
        )
    }

    pub fn name(self) -> &'static str {
        use ErrorCode::*;
        match self {
            BadFrame => "E_BAD_FRAME",
            FrameTooLarge => "E_FRAME_TOO_LARGE",
            UnknownFrame => "E_UNKNOWN_FRAME",
            BadTopic => "E_BAD_TOPIC",
            BadChannel => "E_BAD_CHANNEL",
            BadMessage => "E_BAD_MESSAGE",
            Invalid => "E_INVALID",
            FinFailed => "E_FIN_FAILED",
            ReqFailed => "E_REQ_FAILED",
            TouchFailed => "E_TOUCH_FAILED",
            PubFailed => "E_PUB_FAILED",
            NotFound => "E_NOT_FOUND",
            ShuttingDown => "E_SHUTTING_DOWN",
            Internal => "E_INTERNAL",
            DiskFull => "E_DISK_FULL",
            Unrouted => "E_UNROUTED",
            Unauthorized => "E_UNAUTHORIZED",
            AuthFailed => "E_AUTH_FAILED",
            NotLeader => "E_NOT_LEADER",
            Unavailable => "E_UNAVAILABLE",
        }
    }
}

/// The content of an ERROR frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} ({}): {message}", code.name(), if *fatal { "fatal" } else { "not fatal" })]
pub struct WireError {
    pub code: ErrorCode,
    /// When set, the sender closes the stream after this frame.
    pub fatal: bool,
    /// The publish sequence number this error answers, or 0.
    pub seq: u64,
    pub message: String,
}

impl WireError {
    /// An error with its code's usual fatality.
    pub fn new(code: ErrorCode, seq: u64, message: impl Into<String>) -> Self {
        WireError {
            code,
            fatal: code.is_fatal(),
            seq,
            message: message.into(),
        }
    }

    pub fn fatal(mut self) -> Self {
        self.fatal = true;
        self
    }
}
