use super::*;

const LIMITS: Limits = Limits {
    max_msg_size: 1 << 20,
    max_body_size: 5 << 20,
    max_defer_ms: 3_600_000,
};

fn open(_: Verb, _: &[u8]) -> Result<(), NsqError> {
    Ok(())
}

fn decode_all(bytes: &[u8]) -> Result<Option<Command>, NsqError> {
    decode(&mut BytesMut::from(bytes), &LIMITS, open)
}

fn with_body(line: &str, body: &[u8]) -> Vec<u8> {
    let mut out = line.as_bytes().to_vec();
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    out
}

fn mpub_body(bodies: &[&[u8]]) -> Vec<u8> {
    let mut out = (bodies.len() as u32).to_be_bytes().to_vec();
    for b in bodies {
        out.extend_from_slice(&(b.len() as u32).to_be_bytes());
        out.extend_from_slice(b);
    }
    out
}

#[test]
fn commands_wait_for_the_whole_body_then_consume_exactly_it() {
    let bytes = with_body("PUB t\n", b"hello");
    let mut buf = BytesMut::new();
    for (i, byte) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[*byte]);
        let decoded = decode(&mut buf, &LIMITS, open).unwrap();
        assert_eq!(
            decoded.is_some(),
            i == bytes.len() - 1,
            "after {} bytes",
            i + 1
        );
    }
    assert!(buf.is_empty());
    buf.extend_from_slice(b"NOP\r\nFIN 0000000000000001\n");
    assert_eq!(decode(&mut buf, &LIMITS, open).unwrap(), Some(Command::Nop));
    assert_eq!(
        decode(&mut buf, &LIMITS, open).unwrap(),
        Some(Command::Fin(NsqId::from_offset(1)))
    );
    assert!(buf.is_empty());
}

#[test]
fn every_command_parses() {
    let t = TopicName::new("t").unwrap();
    let cases: Vec<(Vec<u8>, Command)> = vec![
        (b"RDY\n".to_vec(), Command::Rdy(1)),
        (b"RDY 2500\n".to_vec(), Command::Rdy(2500)),
        (b"CLS\n".to_vec(), Command::Cls),
        (
            b"REQ 000000000000000a 1500\n".to_vec(),
            Command::Req {
                id: NsqId::from_offset(10),
                delay_ms: 1500,
            },
        ),
        (
            b"TOUCH 00000000000000ff\n".to_vec(),
            Command::Touch(NsqId::from_offset(255)),
        ),
        (
            b"SUB t c#ephemeral\n".to_vec(),
            Command::Sub {
                topic: t.clone(),
                channel: ChannelName::new("c#ephemeral").unwrap(),
            },
        ),
        (
            with_body("DPUB t 2000\n", b"x"),
            Command::Dpub {
                topic: t.clone(),
                delay_ms: 2000,
                body: Bytes::from_static(b"x"),
            },
        ),
        (
            with_body("MPUB t\n", &mpub_body(&[b"a", b"bc"])),
            Command::Mpub {
                topic: t.clone(),
                bodies: vec![Bytes::from_static(b"a"), Bytes::from_static(b"bc")],
            },
        ),
        (
            with_body("IDENTIFY\n", b"{}"),
            Command::Identify(Bytes::from_static(b"{}")),
        ),
        (
            with_body("AUTH\n", b"secret"),
            Command::Auth(Bytes::from_static(b"secret")),
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(decode_all(&bytes).unwrap(), Some(expected));
    }
}

#[test]
fn malformed_commands_get_nsqd_errors() {
    let big = (LIMITS.max_msg_size + 1) as u32;
    let mut too_big = b"PUB t\n".to_vec();
    too_big.extend_from_slice(&big.to_be_bytes());
    let mut negative = b"MPUB t\n".to_vec();
    negative.extend_from_slice(&(-1i32).to_be_bytes());
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"WAT\n".to_vec(), "E_INVALID invalid command WAT"),
        (b"\n".to_vec(), "E_INVALID invalid command "),
        (
            b"SUB t\n".to_vec(),
            "E_INVALID SUB insufficient number of parameters",
        ),
        (
            b"SUB b@d c\n".to_vec(),
            "E_BAD_TOPIC SUB topic name \"b@d\" is not valid",
        ),
        (
            b"SUB t b@d\n".to_vec(),
            "E_BAD_CHANNEL SUB channel name \"b@d\" is not valid",
        ),
        (
            b"PUB\n".to_vec(),
            "E_INVALID PUB insufficient number of parameters",
        ),
        (
            b"PUB b\x01d\n".to_vec(),
            "E_BAD_TOPIC PUB topic name \"b\\x01d\" is not valid",
        ),
        (
            b"MPUB t!\n".to_vec(),
            "E_BAD_TOPIC E_BAD_TOPIC MPUB topic name \"t!\" is not valid",
        ),
        (
            too_big,
            "E_BAD_MESSAGE PUB message too big 1048577 > 1048576",
        ),
        (
            with_body("PUB t\n", b""),
            "E_BAD_MESSAGE PUB invalid message body size 0",
        ),
        (negative, "E_BAD_BODY MPUB invalid body size -1"),
        (
            with_body("MPUB t\n", &mpub_body(&[b"a"])[..8]),
            "E_BAD_MESSAGE MPUB failed to read message body",
        ),
        (
            with_body("MPUB t\n", &{
                let mut b = mpub_body(&[b"a"]);
                b[3] = 2;
                b
            }),
            "E_BAD_MESSAGE MPUB failed to read message(1) body size",
        ),
        (
            with_body("MPUB t\n", &0u32.to_be_bytes()),
            "E_BAD_BODY MPUB invalid message count 0",
        ),
        (b"RDY x\n".to_vec(), "E_INVALID RDY could not parse count x"),
        (
            b"FIN\n".to_vec(),
            "E_INVALID FIN insufficient number of params",
        ),
        (b"FIN 123\n".to_vec(), "E_INVALID invalid message ID"),
        (
            b"REQ 0000000000000001\n".to_vec(),
            "E_INVALID REQ insufficient number of params",
        ),
        (
            b"REQ 0000000000000001 -5\n".to_vec(),
            "E_INVALID REQ could not parse timeout -5",
        ),
        (
            b"DPUB t 3600001\n".to_vec(),
            "E_INVALID DPUB timeout 3600001 out of range 0-3600000",
        ),
        (
            b"AUTH x\n".to_vec(),
            "E_INVALID AUTH invalid number of parameters",
        ),
        (
            with_body("IDENTIFY\n", &vec![b' '; 5 << 20 | 1]),
            "E_BAD_BODY IDENTIFY body too big 5242881 > 5242880",
        ),
    ];
    for (bytes, expected) in cases {
        let err = decode_all(&bytes).unwrap_err();
        assert_eq!(
            err.to_string(),
            expected,
            "{:?}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(40)])
        );
        assert!(err.fatal);
    }
}

#[test]
fn body_sizes_are_refused_before_the_body_arrives() {
    let mut buf = BytesMut::from(&b"MPUB t\n"[..]);
    buf.extend_from_slice(&(6u32 << 20).to_be_bytes());
    let err = decode(&mut buf, &LIMITS, open).unwrap_err();
    assert_eq!(
        err.to_string(),
        "E_BAD_BODY MPUB body too big 6291456 > 5242880"
    );
}

#[test]
fn a_line_without_end_is_refused_past_the_limit() {
    assert_eq!(decode_all(&[b'A'; MAX_LINE]).unwrap(), None);
    assert!(decode_all(&[b'A'; MAX_LINE + 1]).is_err());
}

#[test]
fn the_gate_sees_the_verb_before_its_parameters() {
    let mut buf = BytesMut::from(&b"FIN\n"[..]);
    let err = decode(&mut buf, &LIMITS, |verb, raw| {
        assert_eq!((verb, raw), (Verb::Fin, &b"FIN"[..]));
        Err(NsqError::fatal("E_INVALID", "cannot FIN in current state"))
    })
    .unwrap_err();
    assert_eq!(err.text, "cannot FIN in current state");
}

#[test]
fn ids_are_sixteen_hex_digits_of_the_offset() {
    for offset in [0, 1, 0xdead_beef, u64::MAX] {
        let id = NsqId::from_offset(offset);
        assert!(id.0.iter().all(u8::is_ascii_hexdigit));
        assert_eq!(id.offset(), Some(offset));
    }
    assert_eq!(NsqId::from_offset(255).to_string(), "00000000000000ff");
    assert_eq!(NsqId(*b"000000000000000G").offset(), None);
    assert_eq!(
        NsqId(*b"00000000000000FF").offset(),
        None,
        "nsqd ids are lowercase"
    );
}

#[test]
fn frames_have_nsq_layout() {
    let mut out = BytesMut::new();
    put_response(&mut out, OK);
    assert_eq!(&out[..], b"\x00\x00\x00\x06\x00\x00\x00\x00OK");
    out.clear();
    put_error(&mut out, &NsqError::soft("E_FIN_FAILED", "x"));
    assert_eq!(&out[..], b"\x00\x00\x00\x12\x00\x00\x00\x01E_FIN_FAILED x");
    out.clear();
    put_message(&mut out, NsqId::from_offset(7), 42, 3, b"body");
    assert_eq!(out.len(), 4 + 4 + 8 + 2 + 16 + 4);
    assert_eq!(&out[..4], &((out.len() - 4) as u32).to_be_bytes());
    assert_eq!(&out[4..8], &2u32.to_be_bytes());
    assert_eq!(&out[8..16], &42u64.to_be_bytes());
    assert_eq!(&out[16..18], &3u16.to_be_bytes());
    assert_eq!(&out[18..34], b"0000000000000007");
    assert_eq!(&out[34..], b"body");
}

#[test]
fn go_quote_escapes_like_percent_q() {
    assert_eq!(go_quote(b"a\"b"), "\"a\\\"b\"");
    assert_eq!(go_quote(b"\xff"), "\"\\xff\"");
    assert_eq!(go_quote("é".as_bytes()), "\"é\"");
}
