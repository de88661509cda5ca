//! Proptest strategies for every command and reply the codec carries.

use std::time::Duration;

use bytes::Bytes;
use proptest::prelude::*;

use super::*;
use crate::message::{ChannelSettings, HeaderName, OrderBy};

/// 1..=max bytes of the name alphabet, except `.` and `..` (refused as directory names).
fn name_base(min: usize, max: usize) -> impl Strategy<Value = String> {
    proptest::string::string_regex(&format!("[A-Za-z0-9._-]{{{min},{max}}}"))
        .expect("valid regex")
        .prop_filter("not . or ..", |n| n != "." && n != "..")
}

fn topic_name() -> impl Strategy<Value = TopicName> {
    prop_oneof![
        4 => name_base(1, MAX_NAME_LEN),
        1 => name_base(MAX_NAME_LEN, MAX_NAME_LEN),
        2 => name_base(1, MAX_NAME_LEN - EPHEMERAL_SUFFIX.len())
            .prop_map(|base| format!("{base}{EPHEMERAL_SUFFIX}")),
        // Dead-letter topics, which may run past 64 bytes by their suffix.
        2 => name_base(1, MAX_NAME_LEN)
            .prop_map(|base| topic(&base).dead_letter().as_str().to_string()),
    ]
    .prop_map(|name| topic(&name))
}

fn channel_name() -> impl Strategy<Value = ChannelName> {
    prop_oneof![
        4 => name_base(1, MAX_NAME_LEN),
        1 => name_base(MAX_NAME_LEN, MAX_NAME_LEN),
        2 => name_base(1, MAX_NAME_LEN - EPHEMERAL_SUFFIX.len())
            .prop_map(|base| format!("{base}{EPHEMERAL_SUFFIX}")),
    ]
    .prop_map(|name| channel(&name))
}

fn message_id() -> impl Strategy<Value = MessageId> {
    any::<[u8; 16]>().prop_map(MessageId)
}

/// Arbitrary Unicode, including control characters and NUL.
fn unicode(min: usize, max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any::<char>(), min..=max).prop_map(String::from_iter)
}

fn headers() -> impl Strategy<Value = Headers> {
    proptest::collection::vec((unicode(1, 16), unicode(0, 32)), 0..8)
        .prop_map(|pairs| Headers::from_pairs(pairs).expect("small headers are valid"))
}

fn body(max: usize) -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

fn new_message() -> impl Strategy<Value = NewMessage> {
    (headers(), body(2048)).prop_map(|(headers, body)| NewMessage { headers, body })
}

/// A duration the wire can carry exactly: whole milliseconds within a u32.
fn millis() -> impl Strategy<Value = Duration> {
    prop_oneof![
        Just(Duration::ZERO),
        Just(Duration::from_millis(u32::MAX.into())),
        any::<u32>().prop_map(|ms| Duration::from_millis(ms.into())),
    ]
}

/// A SUB timeout: `None`, or a non-zero whole number of milliseconds (0 on the wire is `None`).
fn msg_timeout() -> impl Strategy<Value = Option<Duration>> {
    proptest::option::of((1..=u32::MAX).prop_map(|ms| Duration::from_millis(ms.into())))
}

fn admin_op() -> impl Strategy<Value = AdminOp> {
    proptest::sample::select(ALL_OPS.to_vec())
}

fn admin_request() -> impl Strategy<Value = AdminRequest> {
    prop_oneof![
        Just(AdminRequest::Stats { topic: None }),
        topic_name().prop_map(|topic| AdminRequest::Stats { topic: Some(topic) }),
        (topic_name(), proptest::option::of(channel_name()))
            .prop_map(|(topic, channel)| AdminRequest::Locate { topic, channel }),
        (admin_op(), topic_name()).prop_map(|(op, topic)| AdminRequest::Topic { op, topic }),
        (admin_op(), topic_name(), channel_name(), channel_settings()).prop_map(
            |(op, topic, channel, settings)| AdminRequest::Channel {
                op,
                topic,
                channel,
                // Only a create carries settings.
                settings: if op == AdminOp::Create {
                    settings
                } else {
                    ChannelSettings::default()
                },
            }
        ),
    ]
}

fn channel_settings() -> impl Strategy<Value = ChannelSettings> {
    let ordering = prop_oneof![
        Just(OrderBy::Unordered),
        Just(OrderBy::Channel),
        "[a-z-]{1,40}".prop_map(|h| OrderBy::Key(HeaderName::new(&h).unwrap())),
    ];
    (
        proptest::option::of(any::<u16>()),
        proptest::option::of(0u32..u32::MAX),
        proptest::option::of(ordering),
    )
        .prop_map(|(max_attempts, ms, ordering)| ChannelSettings {
            max_attempts,
            msg_timeout: ms.map(|ms| Duration::from_millis(ms.into())),
            ordering,
        })
}

pub(super) fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        (any::<u64>(), topic_name(), new_message()).prop_map(|(seq, topic, message)| {
            Command::Pub {
                seq,
                topic,
                message,
            }
        }),
        (
            any::<u64>(),
            topic_name(),
            proptest::collection::vec(new_message(), 1..5)
        )
            .prop_map(|(seq, topic, messages)| Command::Mpub {
                seq,
                topic,
                messages
            }),
        (any::<u64>(), topic_name(), millis(), new_message()).prop_map(
            |(seq, topic, delay, message)| Command::Dpub {
                seq,
                topic,
                delay,
                message
            }
        ),
        (topic_name(), channel_name(), msg_timeout()).prop_map(|(topic, channel, msg_timeout)| {
            Command::Sub {
                topic,
                channel,
                msg_timeout,
            }
        }),
        any::<u32>().prop_map(Command::Rdy),
        message_id().prop_map(Command::Fin),
        (message_id(), millis()).prop_map(|(id, delay)| Command::Req { id, delay }),
        message_id().prop_map(Command::Touch),
        Just(Command::Cls),
        Just(Command::Nop),
        admin_request().prop_map(Command::Admin),
        unicode(0, 64).prop_map(|secret| Command::Auth { secret }),
    ]
}

pub(super) fn delivery() -> impl Strategy<Value = Delivery> {
    (
        message_id(),
        any::<u64>(),
        any::<u16>(),
        headers(),
        body(2048),
    )
        .prop_map(|(id, timestamp_ns, attempts, headers, body)| Delivery {
            id,
            timestamp_ns,
            attempts,
            headers,
            body,
        })
}

fn wire_error() -> impl Strategy<Value = WireError> {
    (
        proptest::sample::select(ALL_CODES.to_vec()),
        any::<bool>(),
        any::<u64>(),
        unicode(0, 64),
    )
        .prop_map(|(code, fatal, seq, message)| WireError {
            code,
            fatal,
            seq,
            message,
        })
}

pub(super) fn reply() -> impl Strategy<Value = Reply> {
    prop_oneof![
        (
            any::<u64>(),
            proptest::collection::vec(any::<bool>(), 0..20)
        )
            .prop_map(|(seq, duplicates)| Reply::PubOk { seq, duplicates }),
        Just(Reply::SubOk),
        Just(Reply::CloseOk),
        delivery().prop_map(Reply::Message),
        body(512).prop_map(Reply::AdminOk),
        body(512).prop_map(Reply::AuthOk),
        wire_error().prop_map(Reply::Error),
    ]
}

pub(super) fn any_frame() -> impl Strategy<Value = AnyFrame> {
    prop_oneof![
        command().prop_map(AnyFrame::Command),
        reply().prop_map(AnyFrame::Reply),
    ]
}
