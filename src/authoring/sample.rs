//! The inputs of `quiver plugin test`: parameters given as `key=value`, and sample messages
//! given as JSON, parsed once into owned values that lend a [`MessageView`] to the host.
//!
//! A sample message is one JSON object:
//!
//! ```json
//! {"topic": "orders", "headers": {"type": "invoice"}, "body": "{\"total\": 12}", "attempts": 1}
//! ```
//!
//! - `headers`: an object, or a list of `[name, value]` pairs (to repeat a name or keep an
//!   order); default none;
//! - `body` (text) or `body_base64` (bytes), not both; default empty;
//! - `topic`: default the `--topic` flag; `attempts`: default 1 (0 for routers, which run
//!   at publish); `id` (32 hex digits) and `timestamp_ns`: default a made-up id and now.
//!
//! Unknown fields are refused, so that a typo (`header` for `headers`) is not silently
//! ignored.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::Deserialize;

use crate::message::{Headers, MessageId, TopicName};
use crate::plugin::{MessageView, PluginKind};

use super::AuthoringError;

/// Incarnation of the made-up ids of sample messages (their offset is their position).
const SAMPLE_INCARNATION: u64 = 0x5a4d_504c_4500_0000;

/// Parses `--param key=value`: the key is everything before the first `=`.
pub fn parse_param(text: &str) -> Result<(String, String), String> {
    let (key, value) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?} is not key=value"))?;
    if key.trim().is_empty() {
        return Err(format!("{text:?} has an empty key"));
    }
    Ok((key.to_owned(), value.to_owned()))
}

/// Checks a whole parameter list: a rules file's table cannot name a key twice, so neither
/// may the command line.
pub fn check_params(params: &[(String, String)]) -> Result<(), AuthoringError> {
    for (i, (key, _)) in params.iter().enumerate() {
        if params[..i].iter().any(|(earlier, _)| earlier == key) {
            return Err(AuthoringError::DuplicateParam { key: key.clone() });
        }
    }
    Ok(())
}

/// One message to run the plugin on, owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SampleMessage {
    pub topic: TopicName,
    pub id: MessageId,
    pub timestamp_ns: u64,
    pub attempts: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl SampleMessage {
    /// The message with nothing given: no headers, an empty body.
    pub fn empty(defaults: &SampleDefaults) -> SampleMessage {
        SampleMessage {
            topic: defaults.topic.clone(),
            id: MessageId::new(SAMPLE_INCARNATION, defaults.position),
            timestamp_ns: defaults.now_ns,
            attempts: defaults.attempts,
            headers: Headers::new(),
            body: Vec::new(),
        }
    }

    /// Parses one JSON object; `defaults` fills what it leaves out.
    pub fn from_json(text: &str, defaults: &SampleDefaults) -> Result<SampleMessage, String> {
        let raw: RawMessage = serde_json::from_str(text).map_err(|e| e.to_string())?;
        let mut msg = SampleMessage::empty(defaults);
        if let Some(topic) = raw.topic {
            msg.topic = TopicName::new(&topic).map_err(|e| format!("topic {topic:?}: {e}"))?;
        }
        if let Some(id) = raw.id {
            msg.id = MessageId::parse_hex(&id)
                .ok_or_else(|| format!("id {id:?}: expected 32 hex digits"))?;
        }
        msg.timestamp_ns = raw.timestamp_ns.unwrap_or(msg.timestamp_ns);
        msg.attempts = raw.attempts.unwrap_or(msg.attempts);
        let pairs = raw.headers.map_or_else(Vec::new, |h| h.0);
        msg.headers = Headers::from_pairs(pairs).map_err(|e| format!("headers: {e}"))?;
        msg.body = match (raw.body, raw.body_base64) {
            (Some(_), Some(_)) => return Err("give `body` or `body_base64`, not both".to_owned()),
            (Some(text), None) => text.into_bytes(),
            (None, Some(b64)) => base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .map_err(|e| format!("body_base64: {e}"))?,
            (None, None) => Vec::new(),
        };
        Ok(msg)
    }

    pub fn view(&self) -> MessageView<'_> {
        MessageView {
            topic: self.topic.as_str(),
            id: self.id,
            timestamp_ns: self.timestamp_ns,
            attempts: self.attempts,
            headers: &self.headers,
            body: &self.body,
        }
    }
}

/// What a sample message gets for the fields it leaves out.
#[derive(Debug, Clone)]
pub struct SampleDefaults {
    pub topic: TopicName,
    /// Deliveries so far: 1 for filters and samplers, 0 for routers (as the broker passes).
    pub attempts: u16,
    pub now_ns: u64,
    /// The message's 1-based position among the samples; the offset of its made-up id.
    pub position: u64,
}

impl SampleDefaults {
    pub fn new(topic: TopicName, kind: PluginKind) -> SampleDefaults {
        let now_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        SampleDefaults {
            topic,
            attempts: if kind == PluginKind::Router { 0 } else { 1 },
            now_ns,
            position: 1,
        }
    }
}

/// Parses every sample: each `--message`, then each non-blank line of the `--messages` text
/// (its name for errors, and its contents). No sample at all means one empty message.
pub fn parse_samples(
    messages: &[String],
    file: Option<(&str, &str)>,
    defaults: &mut SampleDefaults,
) -> Result<Vec<SampleMessage>, AuthoringError> {
    let mut samples = Vec::new();
    for (i, text) in messages.iter().enumerate() {
        let msg = SampleMessage::from_json(text, defaults).map_err(|reason| {
            AuthoringError::BadMessage {
                origin: format!("--message #{}", i + 1),
                reason,
            }
        })?;
        samples.push(msg);
        defaults.position += 1;
    }
    if let Some((name, text)) = file {
        for (line_no, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let msg = SampleMessage::from_json(line, defaults).map_err(|reason| {
                AuthoringError::BadMessage {
                    origin: format!("{name}:{}", line_no + 1),
                    reason,
                }
            })?;
            samples.push(msg);
            defaults.position += 1;
        }
    }
    if samples.is_empty() {
        samples.push(SampleMessage::empty(defaults));
    }
    Ok(samples)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMessage {
    topic: Option<String>,
    id: Option<String>,
    timestamp_ns: Option<u64>,
    attempts: Option<u16>,
    headers: Option<RawHeaders>,
    body: Option<String>,
    body_base64: Option<String>,
}

/// Headers as an object (`{"name": "value"}`, in the order written) or as a list of
/// `[name, value]` pairs (to repeat a name).
#[derive(Debug)]
struct RawHeaders(Vec<(String, String)>);

impl<'de> Deserialize<'de> for RawHeaders {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(HeadersVisitor)
    }
}

struct HeadersVisitor;

impl<'de> serde::de::Visitor<'de> for HeadersVisitor {
    type Value = RawHeaders;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("an object of string values, or a list of [name, value] pairs")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawHeaders, A::Error> {
        let mut pairs = Vec::new();
        while let Some(pair) = map.next_entry::<String, String>()? {
            pairs.push(pair);
        }
        Ok(RawHeaders(pairs))
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawHeaders, A::Error> {
        let mut pairs = Vec::new();
        while let Some(pair) = seq.next_element::<(String, String)>()? {
            pairs.push(pair);
        }
        Ok(RawHeaders(pairs))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults(kind: PluginKind) -> SampleDefaults {
        let mut d = SampleDefaults::new(TopicName::new("orders").unwrap(), kind);
        d.now_ns = 42;
        d
    }

    fn parse(text: &str) -> Result<SampleMessage, String> {
        SampleMessage::from_json(text, &defaults(PluginKind::Filter))
    }

    fn header_pairs(msg: &SampleMessage) -> Vec<(&str, &str)> {
        msg.headers.iter().collect()
    }

    #[test]
    fn a_full_message_parses_every_field() {
        let msg = parse(
            r#"{"topic":"t2","id":"000000000000000100000000000000ff","timestamp_ns":7,
                "attempts":3,"headers":{"type":"invoice","region":"eu"},"body":"hi"}"#,
        )
        .unwrap();
        assert_eq!(msg.topic.as_str(), "t2");
        assert_eq!(msg.id, MessageId::new(1, 255));
        assert_eq!((msg.timestamp_ns, msg.attempts), (7, 3));
        assert_eq!(
            header_pairs(&msg),
            vec![("type", "invoice"), ("region", "eu")]
        );
        assert_eq!(msg.body, b"hi");
    }

    #[test]
    fn missing_fields_take_the_defaults() {
        let msg = parse("{}").unwrap();
        assert_eq!(msg.topic.as_str(), "orders");
        assert_eq!((msg.timestamp_ns, msg.attempts), (42, 1));
        assert!(msg.headers.is_empty() && msg.body.is_empty());
        let routed = SampleMessage::from_json("{}", &defaults(PluginKind::Router)).unwrap();
        assert_eq!(routed.attempts, 0, "routers run before any delivery");
    }

    #[test]
    fn header_pairs_keep_order_and_repeats() {
        let msg = parse(r#"{"headers":[["b","1"],["a","2"],["b","3"]]}"#).unwrap();
        assert_eq!(header_pairs(&msg), vec![("b", "1"), ("a", "2"), ("b", "3")]);
    }

    #[test]
    fn body_base64_gives_bytes() {
        let msg = parse(r#"{"body_base64":"AAH/"}"#).unwrap();
        assert_eq!(msg.body, vec![0, 1, 255]);
    }

    #[test]
    fn bad_messages_say_why() {
        let err = |text| parse(text).unwrap_err();
        assert!(err(r#"{"header":{}}"#).contains("unknown field `header`"));
        assert_eq!(
            err(r#"{"body":"a","body_base64":"YQ=="}"#),
            "give `body` or `body_base64`, not both"
        );
        assert!(err(r#"{"body_base64":"!!"}"#).starts_with("body_base64: "));
        assert_eq!(err(r#"{"id":"abc"}"#), "id \"abc\": expected 32 hex digits");
        assert!(err(r#"{"topic":"a b"}"#).starts_with("topic \"a b\": "));
        assert!(err(r#"{"headers":{"":"v"}}"#).starts_with("headers: "));
        assert!(
            err(r#"{"headers":{"k":1}}"#).contains("invalid type: integer `1`, expected a string")
        );
        assert!(err(r#"{"attempts":70000}"#).contains("70000"));
        assert!(err("not json").contains("expected"));
    }

    #[test]
    fn samples_come_from_flags_then_lines_with_positions() {
        let mut d = defaults(PluginKind::Filter);
        let file = "{\"body\":\"b\"}\n\n{\"body\":\"c\"}\n";
        let got = parse_samples(
            &[r#"{"body":"a"}"#.to_owned()],
            Some(("m.jsonl", file)),
            &mut d,
        )
        .unwrap();
        let bodies: Vec<&[u8]> = got.iter().map(|m| m.body.as_slice()).collect();
        assert_eq!(bodies, vec![b"a", b"b", b"c"]);
        let offsets: Vec<u64> = got.iter().map(|m| m.id.offset()).collect();
        assert_eq!(offsets, vec![1, 2, 3]);

        let err = parse_samples(&[], Some(("m.jsonl", "{}\n{\"x\":1}")), &mut d).unwrap_err();
        assert!(err.to_string().starts_with("message m.jsonl:2: "), "{err}");
    }

    #[test]
    fn no_sample_means_one_empty_message() {
        let got = parse_samples(&[], None, &mut defaults(PluginKind::Sampler)).unwrap();
        assert_eq!(got.len(), 1);
        assert!(got[0].headers.is_empty() && got[0].body.is_empty());
    }

    #[test]
    fn params_split_at_the_first_equals() {
        assert_eq!(
            parse_param("expr=a == \"b\""),
            Ok(("expr".into(), "a == \"b\"".into()))
        );
        assert_eq!(
            parse_param("route.eu="),
            Ok(("route.eu".into(), String::new()))
        );
        assert_eq!(parse_param("n"), Err("\"n\" is not key=value".into()));
        assert_eq!(parse_param("=3"), Err("\"=3\" has an empty key".into()));
    }

    #[test]
    fn a_param_given_twice_is_refused() {
        let p = |k: &str| (k.to_owned(), "1".to_owned());
        assert!(check_params(&[p("a"), p("b")]).is_ok());
        let err = check_params(&[p("a"), p("b"), p("a")]).unwrap_err();
        assert_eq!(err.to_string(), "parameter `a` is given twice");
    }
}
