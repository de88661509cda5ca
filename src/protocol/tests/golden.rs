//! Golden bytes: the layouts of docs/PROTOCOL.md, written out by hand, and the worked example
//! of that document decoded and re-encoded byte for byte.

use std::time::Duration;

use bytes::Bytes;

use super::*;
use crate::message::{ChannelSettings, HeaderName, OrderBy};

fn assert_command_bytes(command: Command, expected: &[u8]) {
    assert_eq!(
        &encode_command(&command)[..],
        expected,
        "encoding of {command:?}"
    );
    assert_eq!(decode_command(expected), Ok(command));
}

fn assert_reply_bytes(reply: Reply, expected: &[u8]) {
    assert_eq!(&encode_reply(&reply)[..], expected, "encoding of {reply:?}");
    assert_eq!(decode_reply(expected), Ok(reply));
}

fn hello() -> NewMessage {
    NewMessage::new("hello").with_header("k", "v")
}

#[test]
fn golden_pub_with_one_header() {
    let expected = hex(&[
        "0000001c",         // length 28
        "01",               // PUB
        "0000000000000001", // seq 1
        "01 74",            // str8 "t"
        "0001",             // 1 header
        "0001 6b",          // str16 "k"
        "0001 76",          // str16 "v"
        "00000005",         // body length 5
        "68656c6c6f",       // "hello"
    ]);
    assert_command_bytes(
        Command::Pub {
            seq: 1,
            topic: topic("t"),
            message: hello(),
        },
        &expected,
    );
}

#[test]
fn golden_mpub_and_dpub() {
    let expected = hex(&[
        "0000001c",         // length 28
        "02",               // MPUB
        "0000000000000002", // seq 2
        "01 74",            // str8 "t"
        "00000002",         // 2 messages
        "0000 00000001 61", // no headers, body "a"
        "0000 00000000",    // no headers, empty body
    ]);
    assert_command_bytes(
        Command::Mpub {
            seq: 2,
            topic: topic("t"),
            messages: vec![NewMessage::new("a"), NewMessage::new("")],
        },
        &expected,
    );

    let expected = hex(&[
        "00000016",         // length 22
        "03",               // DPUB
        "0000000000000003", // seq 3
        "01 74",            // str8 "t"
        "000003e8",         // delay 1000 ms
        "0000",             // no headers
        "00000001 61",      // body "a"
    ]);
    assert_command_bytes(
        Command::Dpub {
            seq: 3,
            topic: topic("t"),
            delay: Duration::from_secs(1),
            message: NewMessage::new("a"),
        },
        &expected,
    );
}

#[test]
fn golden_sub_and_rdy() {
    let expected = hex(&[
        "00000009", // length 9
        "10",       // SUB
        "01 74",    // str8 "t"
        "01 63",    // str8 "c"
        "00000000", // msg_timeout 0: broker default
    ]);
    assert_command_bytes(
        Command::Sub {
            topic: topic("t"),
            channel: channel("c"),
            msg_timeout: None,
        },
        &expected,
    );

    let expected = hex(&["00000009", "10", "01 74", "01 63", "00007530"]); // 30000 ms
    assert_command_bytes(
        Command::Sub {
            topic: topic("t"),
            channel: channel("c"),
            msg_timeout: Some(Duration::from_secs(30)),
        },
        &expected,
    );

    let expected = hex(&["00000005", "11", "0000000a"]); // RDY 10
    assert_command_bytes(Command::Rdy(10), &expected);
}

#[test]
fn golden_fin_req_touch_cls_nop() {
    let id = "0123456789abcdef 0000000000000001";
    let expected = hex(&["00000011", "12", id]);
    assert_command_bytes(Command::Fin(MessageId(SAMPLE_ID)), &expected);

    let expected = hex(&["00000015", "13", id, "00001388"]); // delay 5000 ms
    assert_command_bytes(
        Command::Req {
            id: MessageId(SAMPLE_ID),
            delay: Duration::from_secs(5),
        },
        &expected,
    );

    let expected = hex(&["00000011", "14", id]);
    assert_command_bytes(Command::Touch(MessageId(SAMPLE_ID)), &expected);

    assert_command_bytes(Command::Cls, &hex(&["00000001", "15"]));
    assert_command_bytes(Command::Nop, &hex(&["00000001", "16"]));
}

#[test]
fn golden_admin_requests() {
    let t = topic("t");
    let c = channel("c");
    // op, str8 topic, str8 channel.
    assert_command_bytes(
        Command::Admin(AdminRequest::Stats { topic: None }),
        &hex(&["00000004", "20", "01", "00", "00"]),
    );
    assert_command_bytes(
        Command::Admin(AdminRequest::Stats {
            topic: Some(t.clone()),
        }),
        &hex(&["00000005", "20", "01", "01 74", "00"]),
    );
    let topic_ops = [
        (AdminOp::Create, "11"),
        (AdminOp::Delete, "12"),
        (AdminOp::Pause, "13"),
    ];
    let topic_ops = topic_ops
        .into_iter()
        .chain([(AdminOp::Unpause, "14"), (AdminOp::Empty, "15")]);
    for (op, code) in topic_ops {
        assert_command_bytes(
            Command::Admin(AdminRequest::Topic {
                op,
                topic: t.clone(),
            }),
            &hex(&["00000005", "20", code, "01 74", "00"]),
        );
    }
    let channel_ops = [
        (AdminOp::Create, "21"),
        (AdminOp::Delete, "22"),
        (AdminOp::Pause, "23"),
        (AdminOp::Unpause, "24"),
        (AdminOp::Empty, "25"),
    ];
    for (op, code) in channel_ops {
        assert_command_bytes(
            Command::Admin(AdminRequest::Channel {
                op,
                topic: t.clone(),
                channel: c.clone(),
                settings: ChannelSettings::default(),
            }),
            &hex(&["00000006", "20", code, "01 74", "01 63"]),
        );
    }
}

#[test]
fn golden_channel_create_with_settings() {
    let settings = ChannelSettings {
        max_attempts: Some(5),
        msg_timeout: None,
        ordering: Some(OrderBy::Key(HeaderName::new("user").unwrap())),
    };
    let create = |settings| {
        Command::Admin(AdminRequest::Channel {
            op: AdminOp::Create,
            topic: TopicName::new("t").unwrap(),
            channel: ChannelName::new("c").unwrap(),
            settings,
        })
    };
    // flags 0x05: max_attempts, then ordering 2 (key) with its header.
    assert_command_bytes(
        create(settings),
        &hex(&[
            "0000000f",
            "20",
            "21",
            "01 74",
            "01 63",
            "05",
            "0005",
            "02",
            "04 75736572",
        ]),
    );
    let channel = ChannelSettings {
        ordering: Some(OrderBy::Channel),
        ..ChannelSettings::default()
    };
    assert_command_bytes(
        create(channel),
        &hex(&["00000009", "20", "21", "01 74", "01 63", "04", "01", "00"]),
    );
}

#[test]
fn golden_pub_ok_marks_duplicates_in_a_bitmap() {
    // An MPUB of 10 messages whose messages 1 and 9 were duplicates.
    let mut marks = vec![false; 10];
    marks[1] = true;
    marks[9] = true;
    assert_reply_bytes(
        Reply::PubOk {
            seq: 7,
            duplicates: marks,
        },
        &hex(&["0000000f", "81", "0000000000000007", "0000000a", "02", "02"]),
    );
    // A PUB whose one message was a duplicate.
    assert_reply_bytes(
        Reply::PubOk {
            seq: 2,
            duplicates: vec![true],
        },
        &hex(&["0000000e", "81", "0000000000000002", "00000001", "01"]),
    );
    // A bitmap shorter than its count is truncated.
    let short = hex(&["0000000e", "81", "0000000000000002", "00000009", "01"]);
    assert!(decode_reply(&short).is_err());
}

#[test]
fn golden_pub_ok_sub_ok_close_ok_admin_ok() {
    assert_reply_bytes(
        Reply::PubOk {
            seq: 1,
            duplicates: vec![],
        },
        &hex(&["00000009", "81", "0000000000000001"]),
    );
    assert_reply_bytes(Reply::SubOk, &hex(&["00000001", "82"]));
    assert_reply_bytes(Reply::CloseOk, &hex(&["00000001", "83"]));
    assert_reply_bytes(
        Reply::AdminOk(Bytes::from_static(b"{}")),
        &hex(&["00000003", "85", "7b7d"]),
    );
}

#[test]
fn golden_error() {
    let expected = hex(&[
        "00000011",         // length 17
        "ff",               // ERROR
        "0004",             // code 4 = E_BAD_TOPIC
        "00",               // not fatal
        "0000000000000007", // seq 7
        "0003 626164",      // str16 "bad"
    ]);
    assert_reply_bytes(
        Reply::Error(WireError::new(ErrorCode::BadTopic, 7, "bad")),
        &expected,
    );

    let expected = hex(&[
        "0000000e",         // length 14
        "ff",               // ERROR
        "000d",             // code 13 = E_SHUTTING_DOWN
        "01",               // fatal
        "0000000000000000", // seq 0
        "0000",             // empty message
    ]);
    assert_reply_bytes(
        Reply::Error(WireError::new(ErrorCode::ShuttingDown, 0, "")),
        &expected,
    );
}

#[test]
fn golden_message() {
    let expected = hex(&[
        "0000002c",                          // length 44
        "84",                                // MESSAGE
        "0123456789abcdef 0000000000000001", // id
        "17979cfe362a0000",                  // timestamp_ns 1700000000000000000
        "0001",                              // attempts 1
        "0001",                              // 1 header
        "0001 6b",                           // str16 "k"
        "0001 76",                           // str16 "v"
        "00000005",                          // body length 5
        "68656c6c6f",                        // "hello"
    ]);
    let delivery = Delivery {
        id: MessageId::new(0x0123_4567_89ab_cdef, 1),
        timestamp_ns: 1_700_000_000_000_000_000,
        attempts: 1,
        headers: hello().headers,
        body: Bytes::from_static(b"hello"),
    };
    assert_eq!(delivery.id, MessageId(SAMPLE_ID));
    assert_reply_bytes(Reply::Message(delivery), &expected);
}

/// The worked example of docs/PROTOCOL.md, as one client→broker and one broker→client stream.
#[test]
fn golden_worked_example_streams() {
    let publish =
        hex(&["0000001c 01 0000000000000001 0174 0001 00016b 000176 00000005 68656c6c6f"]);
    let pub_ok = hex(&["00000009 81 0000000000000001"]);
    let sub = hex(&["00000009 10 0174 0163 00000000"]);
    let rdy = hex(&["00000005 11 0000000a"]);
    let message = hex(&[
        "0000002c 84 0123456789abcdef0000000000000001 17979cfe362a0000 0001",
        "0001 00016b 000176 00000005 68656c6c6f",
    ]);
    let fin = hex(&["00000011 12 0123456789abcdef0000000000000001"]);
    assert_eq!(
        decode_reply(&pub_ok),
        Ok(Reply::PubOk {
            seq: 1,
            duplicates: vec![]
        })
    );
    assert!(matches!(
        decode_command(&publish),
        Ok(Command::Pub { seq: 1, .. })
    ));

    let mut client = BytesMut::new();
    client.extend_from_slice(&sub);
    client.extend_from_slice(&rdy);
    client.extend_from_slice(&fin);
    let mut commands = Vec::new();
    while let Some(raw) = split_frame(&mut client).expect("valid stream") {
        commands.push(Command::decode(raw).expect("valid command"));
    }
    assert_eq!(
        commands,
        vec![
            Command::Sub {
                topic: topic("t"),
                channel: channel("c"),
                msg_timeout: None
            },
            Command::Rdy(10),
            Command::Fin(MessageId(SAMPLE_ID)),
        ]
    );

    let mut broker = BytesMut::new();
    broker.extend_from_slice(&hex(&["00000001 82"]));
    broker.extend_from_slice(&message);
    let mut replies = Vec::new();
    while let Some(raw) = split_frame(&mut broker).expect("valid stream") {
        replies.push(Reply::decode(raw).expect("valid reply"));
    }
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[0], Reply::SubOk);
    let Reply::Message(delivery) = &replies[1] else {
        panic!("second reply is not a MESSAGE");
    };
    assert_eq!(delivery.id, MessageId(SAMPLE_ID));
    assert_eq!(delivery.attempts, 1);
    assert_eq!(delivery.headers.get("k"), Some("v"));
    assert_eq!(&delivery.body[..], b"hello");
}

/// The hex of every code block in section 8 of `docs/PROTOCOL.md`: on each line, the leading
/// two-digit hex tokens, up to the first token that is not one.
fn protocol_md_example_bytes() -> Vec<u8> {
    let doc = include_str!("../../../docs/PROTOCOL.md");
    let (_, section) = doc
        .split_once("## 8. Worked example")
        .expect("PROTOCOL.md has a worked example section");
    // Up to the next section.
    let section = section.split("\n## ").next().unwrap_or(section);
    let mut bytes = Vec::new();
    let mut in_block = false;
    for line in section.lines() {
        if line.trim_start().starts_with("```") {
            in_block = !in_block;
            continue;
        }
        if !in_block {
            continue;
        }
        for token in line.split_whitespace() {
            match u8::from_str_radix(token, 16) {
                Ok(byte) if token.len() == 2 => bytes.push(byte),
                _ => break,
            }
        }
    }
    bytes
}

#[test]
fn worked_example_in_protocol_md_decodes_and_re_encodes_byte_for_byte() {
    let mut buf = BytesMut::from(&protocol_md_example_bytes()[..]);
    let mut frames = Vec::new();
    while !buf.is_empty() {
        let before = buf.clone();
        let raw = split_frame(&mut buf)
            .expect("documented frame is well framed")
            .expect("documented frame is complete");
        let bytes = &before[..before.len() - buf.len()];
        let decoded = if raw.kind < 0x80 {
            AnyFrame::Command(Command::decode(raw).expect("documented command decodes"))
        } else {
            AnyFrame::Reply(Reply::decode(raw).expect("documented reply decodes"))
        };
        let mut again = BytesMut::new();
        decoded.encode(&mut again);
        assert_eq!(&again[..], bytes, "{decoded:?}");
        frames.push(decoded);
    }
    let id = MessageId(SAMPLE_ID);
    let walkthrough = [
        AnyFrame::Command(Command::Pub {
            seq: 1,
            topic: topic("t"),
            message: hello(),
        }),
        AnyFrame::Reply(Reply::PubOk {
            seq: 1,
            duplicates: vec![],
        }),
        AnyFrame::Command(Command::Sub {
            topic: topic("t"),
            channel: channel("c"),
            msg_timeout: None,
        }),
        AnyFrame::Reply(Reply::SubOk),
        AnyFrame::Command(Command::Rdy(10)),
        AnyFrame::Reply(Reply::Message(Delivery {
            id,
            timestamp_ns: 1_700_000_000_000_000_000,
            attempts: 1,
            headers: hello().headers,
            body: Bytes::from_static(b"hello"),
        })),
        AnyFrame::Command(Command::Fin(id)),
    ];
    assert_eq!(frames.len(), walkthrough.len() + 12, "{frames:#?}");
    assert_eq!(frames[..walkthrough.len()], walkthrough[..]);
    let kinds: Vec<&str> = frames[walkthrough.len()..]
        .iter()
        .map(|f| match f {
            AnyFrame::Command(Command::Mpub { .. }) => "MPUB",
            AnyFrame::Command(Command::Dpub { .. }) => "DPUB",
            AnyFrame::Command(Command::Req { .. }) => "REQ",
            AnyFrame::Command(Command::Touch(_)) => "TOUCH",
            AnyFrame::Command(Command::Cls) => "CLS",
            AnyFrame::Command(Command::Nop) => "NOP",
            AnyFrame::Command(Command::Admin(_)) => "ADMIN",
            AnyFrame::Reply(Reply::Error(_)) => "ERROR",
            AnyFrame::Reply(Reply::CloseOk) => "CLOSE_OK",
            AnyFrame::Reply(Reply::AdminOk(_)) => "ADMIN_OK",
            _ => "other",
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "ERROR", "ERROR", "MPUB", "DPUB", "REQ", "TOUCH", "CLS", "NOP", "CLOSE_OK", "ADMIN",
            "ADMIN", "ADMIN_OK"
        ]
    );
}
