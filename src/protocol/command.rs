//! Frames a client sends: publishes, subscription commands and admin requests.

use std::time::Duration;

use bytes::{BufMut, BytesMut};

use super::wire::{self, Reader};
use super::{FrameError, RawFrame};
use crate::message::{
    ChannelName, ChannelSettings, HeaderName, MessageId, NewMessage, OrderBy, TopicName,
};

pub(super) const PUB: u8 = 0x01;
pub(super) const MPUB: u8 = 0x02;
pub(super) const DPUB: u8 = 0x03;
pub(super) const SUB: u8 = 0x10;
pub(super) const RDY: u8 = 0x11;
pub(super) const FIN: u8 = 0x12;
pub(super) const REQ: u8 = 0x13;
pub(super) const TOUCH: u8 = 0x14;
pub(super) const CLS: u8 = 0x15;
pub(super) const NOP: u8 = 0x16;
pub(super) const ADMIN: u8 = 0x20;
pub(super) const AUTH: u8 = 0x30;

/// A client command, parsed and validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Publish one message. `seq` is echoed in the PUB-OK or ERROR that answers it.
    Pub {
        seq: u64,
        topic: TopicName,
        message: NewMessage,
    },
    /// Publish a batch atomically: all of it is stored, or none.
    Mpub {
        seq: u64,
        topic: TopicName,
        messages: Vec<NewMessage>,
    },
    /// Publish one message that no channel delivers before `delay` has passed.
    Dpub {
        seq: u64,
        topic: TopicName,
        delay: Duration,
        message: NewMessage,
    },
    /// Subscribe this stream to a channel. `msg_timeout` of `None` takes the broker's default.
    Sub {
        topic: TopicName,
        channel: ChannelName,
        msg_timeout: Option<Duration>,
    },
    /// Set this consumer's credit: how many messages may be in flight to it at once.
    Rdy(u32),
    /// Acknowledge a message.
    Fin(MessageId),
    /// Give a message back, to be redelivered after `delay`.
    Req {
        id: MessageId,
        delay: Duration,
    },
    /// Reset a message's deadline to now plus the consumer's timeout.
    Touch(MessageId),
    /// Stop sending new messages; close once the ones in flight are settled.
    Cls,
    /// Does nothing; keeps a stream busy.
    Nop,
    Admin(AdminRequest),
    /// Authenticate the whole connection with a token or an auth server's secret. Sent on
    /// a stream of its own, answered with AUTH_OK or a fatal `E_AUTH_FAILED`; streams opened
    /// after the answer act as the authenticated identity.
    Auth {
        secret: String,
    },
}

/// An admin request. Each one travels on a stream of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminRequest {
    /// Statistics as JSON, for one topic or all.
    Stats {
        topic: Option<TopicName>,
    },
    /// Where the topic is served: this broker, or (in a cluster) the node that leads it.
    /// Like a PUB or SUB, it creates the topic if it does not exist. With a channel it asks
    /// as a subscriber of that channel, without one as a publisher.
    Locate {
        topic: TopicName,
        channel: Option<ChannelName>,
    },
    Topic {
        op: AdminOp,
        topic: TopicName,
    },
    Channel {
        op: AdminOp,
        topic: TopicName,
        channel: ChannelName,
        /// Options of a channel create; ignored (and not sent) for other ops.
        settings: ChannelSettings,
    },
}

/// Flags of the settings block a channel create may carry after its names.
const SET_MAX_ATTEMPTS: u8 = 0x01;
const SET_MSG_TIMEOUT: u8 = 0x02;
const SET_ORDERING: u8 = 0x04;
const ORDER_NONE: u8 = 0;
const ORDER_CHANNEL: u8 = 1;
const ORDER_KEY: u8 = 2;

/// What an admin request does to its topic or channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminOp {
    Create,
    Delete,
    Pause,
    Unpause,
    Empty,
}

impl AdminOp {
    const ALL: [AdminOp; 5] = [
        AdminOp::Create,
        AdminOp::Delete,
        AdminOp::Pause,
        AdminOp::Unpause,
        AdminOp::Empty,
    ];

    fn code(self) -> u8 {
        match self {
            AdminOp::Create => 1,
            AdminOp::Delete => 2,
            AdminOp::Pause => 3,
            AdminOp::Unpause => 4,
            AdminOp::Empty => 5,
        }
    }

    fn from_code(code: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|op| op.code() == code)
    }
}

const ADMIN_STATS: u8 = 0x01;
const ADMIN_LOCATE: u8 = 0x02;
const ADMIN_TOPIC: u8 = 0x10;
const ADMIN_CHANNEL: u8 = 0x20;

impl Command {
    /// Appends this command's frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        match self {
            Command::Pub {
                seq,
                topic,
                message,
            } => {
                let start = publish_header(dst, PUB, *seq, topic);
                wire::put_message(dst, message);
                wire::finish(dst, start);
            }
            Command::Mpub {
                seq,
                topic,
                messages,
            } => {
                let start = publish_header(dst, MPUB, *seq, topic);
                dst.put_u32(messages.len() as u32);
                messages.iter().for_each(|m| wire::put_message(dst, m));
                wire::finish(dst, start);
            }
            Command::Dpub {
                seq,
                topic,
                delay,
                message,
            } => {
                let start = publish_header(dst, DPUB, *seq, topic);
                dst.put_u32(millis(*delay));
                wire::put_message(dst, message);
                wire::finish(dst, start);
            }
            Command::Sub {
                topic,
                channel,
                msg_timeout,
            } => {
                let start = wire::begin(dst, SUB);
                wire::put_str8(dst, topic.as_str());
                wire::put_str8(dst, channel.as_str());
                dst.put_u32(msg_timeout.map_or(0, millis));
                wire::finish(dst, start);
            }
            Command::Rdy(count) => {
                let start = wire::begin(dst, RDY);
                dst.put_u32(*count);
                wire::finish(dst, start);
            }
            Command::Fin(id) => encode_id(dst, FIN, id),
            Command::Touch(id) => encode_id(dst, TOUCH, id),
            Command::Req { id, delay } => {
                let start = wire::begin(dst, REQ);
                dst.put_slice(&id.0);
                dst.put_u32(millis(*delay));
                wire::finish(dst, start);
            }
            Command::Cls => wire::empty(dst, CLS),
            Command::Nop => wire::empty(dst, NOP),
            Command::Admin(request) => request.encode(dst),
            Command::Auth { secret } => {
                let start = wire::begin(dst, AUTH);
                wire::put_str16(dst, secret);
                wire::finish(dst, start);
            }
        }
    }

    /// Phase two of decoding: parses a frame split off by [`super::split_frame`].
    pub fn decode(frame: RawFrame) -> Result<Command, FrameError> {
        let mut r = Reader::new(frame.payload);
        let command = match frame.kind {
            PUB => Command::Pub {
                seq: r.u64("sequence number")?,
                topic: r.topic()?,
                message: r.message()?,
            },
            MPUB => {
                let seq = r.u64("sequence number")?;
                let topic = r.topic()?;
                let count = r.u32("message count")?;
                if count == 0 {
                    return Err(FrameError::OutOfRange {
                        what: "MPUB message count",
                        value: 0,
                    });
                }
                // Each message takes at least 6 bytes, so a lying count can't force a big
                // allocation.
                let mut messages = Vec::with_capacity((count as usize).min(1024));
                for _ in 0..count {
                    messages.push(r.message()?);
                }
                Command::Mpub {
                    seq,
                    topic,
                    messages,
                }
            }
            DPUB => Command::Dpub {
                seq: r.u64("sequence number")?,
                topic: r.topic()?,
                delay: Duration::from_millis(r.u32("delay")?.into()),
                message: r.message()?,
            },
            SUB => Command::Sub {
                topic: r.topic()?,
                channel: r.channel()?,
                msg_timeout: match r.u32("message timeout")? {
                    0 => None,
                    ms => Some(Duration::from_millis(ms.into())),
                },
            },
            RDY => Command::Rdy(r.u32("RDY count")?),
            FIN => Command::Fin(r.id()?),
            TOUCH => Command::Touch(r.id()?),
            REQ => Command::Req {
                id: r.id()?,
                delay: Duration::from_millis(r.u32("delay")?.into()),
            },
            CLS => Command::Cls,
            NOP => Command::Nop,
            ADMIN => Command::Admin(AdminRequest::decode(&mut r)?),
            AUTH => Command::Auth {
                secret: r.str16("AUTH secret")?,
            },
            kind => return Err(FrameError::UnknownType { kind }),
        };
        r.end()?;
        Ok(command)
    }

    /// The sequence number of a publish command, or 0.
    pub fn seq(&self) -> u64 {
        match self {
            Command::Pub { seq, .. } | Command::Mpub { seq, .. } | Command::Dpub { seq, .. } => {
                *seq
            }
            _ => 0,
        }
    }
}

impl AdminRequest {
    fn encode(&self, dst: &mut BytesMut) {
        let start = wire::begin(dst, ADMIN);
        let (op, topic, channel) = match self {
            AdminRequest::Stats { topic } => (ADMIN_STATS, topic.as_ref(), None),
            AdminRequest::Locate { topic, channel } => {
                (ADMIN_LOCATE, Some(topic), channel.as_ref())
            }
            AdminRequest::Topic { op, topic } => (ADMIN_TOPIC | op.code(), Some(topic), None),
            AdminRequest::Channel {
                op, topic, channel, ..
            } => (ADMIN_CHANNEL | op.code(), Some(topic), Some(channel)),
        };
        dst.put_u8(op);
        wire::put_str8(dst, topic.map_or("", |t| t.as_str()));
        wire::put_str8(dst, channel.map_or("", |c| c.as_str()));
        if let AdminRequest::Channel {
            op: AdminOp::Create,
            settings,
            ..
        } = self
        {
            encode_settings(dst, settings);
        }
        wire::finish(dst, start);
    }

    fn decode(r: &mut Reader) -> Result<AdminRequest, FrameError> {
        let code = r.u8("admin operation")?;
        let topic = r.str8("topic")?;
        let channel = r.str8("channel")?;
        let topic_name = || TopicName::new(&topic).map_err(FrameError::Invalid);
        let channel_name = || ChannelName::new(&channel).map_err(FrameError::Invalid);
        let op = || {
            AdminOp::from_code(code & 0x0f).ok_or(FrameError::OutOfRange {
                what: "admin operation",
                value: code.into(),
            })
        };
        match code & 0xf0 {
            _ if code == ADMIN_STATS => Ok(AdminRequest::Stats {
                topic: if topic.is_empty() {
                    None
                } else {
                    Some(topic_name()?)
                },
            }),
            _ if code == ADMIN_LOCATE => Ok(AdminRequest::Locate {
                topic: topic_name()?,
                channel: if channel.is_empty() {
                    None
                } else {
                    Some(channel_name()?)
                },
            }),
            ADMIN_TOPIC => Ok(AdminRequest::Topic {
                op: op()?,
                topic: topic_name()?,
            }),
            ADMIN_CHANNEL => {
                let op = op()?;
                let settings = if op == AdminOp::Create && !r.is_empty() {
                    decode_settings(r)?
                } else {
                    ChannelSettings::default()
                };
                Ok(AdminRequest::Channel {
                    op,
                    topic: topic_name()?,
                    channel: channel_name()?,
                    settings,
                })
            }
            _ => Err(FrameError::OutOfRange {
                what: "admin operation",
                value: code.into(),
            }),
        }
    }
}

/// The settings block of a channel create: `flags: u8`, then `max_attempts: u16`,
/// `msg_timeout: u32 ms` and `ordering: u8, order_key_header: str8`, each only when its flag
/// is set. Nothing at all when no setting is given, so such a frame is as before.
fn encode_settings(dst: &mut BytesMut, settings: &ChannelSettings) {
    let mut flags = 0;
    flags |= if settings.max_attempts.is_some() {
        SET_MAX_ATTEMPTS
    } else {
        0
    };
    flags |= if settings.msg_timeout.is_some() {
        SET_MSG_TIMEOUT
    } else {
        0
    };
    flags |= if settings.ordering.is_some() {
        SET_ORDERING
    } else {
        0
    };
    if flags == 0 {
        return;
    }
    dst.put_u8(flags);
    if let Some(max) = settings.max_attempts {
        dst.put_u16(max);
    }
    if let Some(timeout) = settings.msg_timeout {
        dst.put_u32(millis(timeout));
    }
    if let Some(ordering) = settings.ordering {
        let (mode, header) = match ordering {
            OrderBy::Unordered => (ORDER_NONE, ""),
            OrderBy::Channel => (ORDER_CHANNEL, ""),
            OrderBy::Key(header) => (ORDER_KEY, header.as_str()),
        };
        dst.put_u8(mode);
        wire::put_str8(dst, header);
    }
}

fn decode_settings(r: &mut Reader) -> Result<ChannelSettings, FrameError> {
    let flags = r.u8("channel settings")?;
    if flags & !(SET_MAX_ATTEMPTS | SET_MSG_TIMEOUT | SET_ORDERING) != 0 {
        return Err(FrameError::OutOfRange {
            what: "channel settings flags",
            value: flags.into(),
        });
    }
    let mut settings = ChannelSettings::default();
    if flags & SET_MAX_ATTEMPTS != 0 {
        settings.max_attempts = Some(r.u16("max attempts")?);
    }
    if flags & SET_MSG_TIMEOUT != 0 {
        let ms = r.u32("message timeout")?;
        settings.msg_timeout = Some(Duration::from_millis(ms.into()));
    }
    if flags & SET_ORDERING != 0 {
        let mode = r.u8("ordering")?;
        let header = r.str8("order key header")?;
        let bad = |value: u64| FrameError::OutOfRange {
            what: "ordering",
            value,
        };
        settings.ordering = Some(match (mode, header.is_empty()) {
            (ORDER_NONE, true) => OrderBy::Unordered,
            (ORDER_CHANNEL, true) => OrderBy::Channel,
            (ORDER_KEY, false) => OrderBy::Key(HeaderName::new(&header).ok_or(bad(mode.into()))?),
            _ => return Err(bad(mode.into())),
        });
    }
    Ok(settings)
}

fn publish_header(dst: &mut BytesMut, kind: u8, seq: u64, topic: &TopicName) -> usize {
    let start = wire::begin(dst, kind);
    dst.put_u64(seq);
    wire::put_str8(dst, topic.as_str());
    start
}

fn encode_id(dst: &mut BytesMut, kind: u8, id: &MessageId) {
    let start = wire::begin(dst, kind);
    dst.put_slice(&id.0);
    wire::finish(dst, start);
}

/// Durations travel as u32 milliseconds; longer ones saturate (the broker caps them lower).
fn millis(d: Duration) -> u32 {
    d.as_millis().min(u32::MAX as u128) as u32
}
