//! nsqd's auth server protocol, asked exactly as nsqd 1.3.0 asks it, so that existing auth
//! servers (pynsqauthd and the like) work unchanged.
//!
//! `GET http://<address>/auth?remote_ip=&tls=&secret=&common_name=` (or the address itself
//! when it holds `://`), answered with `{"ttl", "identity", "identity_url",
//! "authorizations": [{"topic", "channels", "permissions"}]}`. Topic and channel entries are
//! regular expressions, unanchored as Go's `MatchString`; `publish` needs a channel entry that
//! matches the empty string (nsqd checks publishes against channel `""`). The answer holds
//! for `ttl` seconds; then the secret is asked about again.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::{Request, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use regex::Regex;
use serde::Deserialize;

use super::AuthError;
use crate::broker::{Grants, Operation, Permission};

/// How long to wait for an auth server: nsqd's defaults (2 s connect, 5 s request).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// The largest answer read from an auth server.
const MAX_ANSWER: usize = 1 << 20;

/// A client for one or more auth servers; each query tries them in turn from a rotating
/// start, as nsqd does, and the first answer wins.
#[derive(Debug, Clone)]
pub struct AuthServer {
    addresses: Vec<String>,
    http: HttpClient<HttpConnector, Empty<Bytes>>,
    next: Arc<std::sync::atomic::AtomicUsize>,
}

/// What the caller knows of the connection the secret came on.
#[derive(Debug, Clone, Default)]
pub struct Query<'a> {
    pub remote_ip: String,
    pub tls: bool,
    pub common_name: &'a str,
    pub secret: &'a str,
}

/// An accepted secret: who it is, and what it may do until `expires`.
#[derive(Debug, Clone)]
pub struct Answer {
    pub identity: String,
    pub identity_url: String,
    pub grants: Arc<ServerGrants>,
    pub expires: Instant,
}

#[derive(Debug, Deserialize)]
struct RawAnswer {
    ttl: i64,
    #[serde(default)]
    identity: String,
    #[serde(default)]
    identity_url: String,
    #[serde(default)]
    authorizations: Vec<RawAuthorization>,
}

#[derive(Debug, Deserialize)]
struct RawAuthorization {
    topic: String,
    #[serde(default)]
    channels: Vec<String>,
    #[serde(default)]
    permissions: Vec<String>,
}

/// The authorizations of one answer, compiled.
#[derive(Debug)]
pub struct ServerGrants {
    list: Vec<Authorization>,
}

#[derive(Debug)]
struct Authorization {
    topic: Regex,
    channels: Vec<Regex>,
    publish: bool,
    subscribe: bool,
}

impl ServerGrants {
    pub fn len(&self) -> usize {
        self.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }
}

impl Grants for ServerGrants {
    fn allows(&self, op: &Operation<'_>) -> bool {
        // nsqd's auth servers grant publish and subscribe only.
        let (wanted, channel) = match op {
            Operation::Publish(_) => (Permission::Publish, ""),
            Operation::Subscribe(_, channel) => (Permission::Subscribe, channel.as_str()),
            Operation::Admin(..) | Operation::AdminAll => return false,
        };
        self.list.iter().any(|a| {
            let has = match wanted {
                Permission::Publish => a.publish,
                _ => a.subscribe,
            };
            has && a.topic.is_match(op.topic()) && a.channels.iter().any(|c| c.is_match(channel))
        })
    }
}

impl AuthServer {
    pub fn new(addresses: Vec<String>) -> AuthServer {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        connector.set_nodelay(true);
        AuthServer {
            addresses,
            http: HttpClient::builder(TokioExecutor::new()).build(connector),
            next: Arc::default(),
        }
    }

    /// Asks the auth servers about a secret. An error means no server answered usefully:
    /// the caller refuses the secret.
    pub async fn ask(&self, query: &Query<'_>) -> Result<Answer, AuthError> {
        let n = self.addresses.len();
        let start = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut failures = Vec::new();
        for i in 0..n {
            let address = &self.addresses[(start + i) % n];
            match self.ask_one(address, query).await {
                Ok(answer) => return Ok(answer),
                Err(why) => failures.push(format!("{address}: {why}")),
            }
        }
        Err(AuthError::ServerUnavailable(failures.join("; ")))
    }

    async fn ask_one(&self, address: &str, query: &Query<'_>) -> Result<Answer, String> {
        let uri = endpoint(address, query)?;
        let request = Request::get(uri)
            .header(hyper::header::ACCEPT, "application/vnd.nsq; version=1.0")
            .body(Empty::new())
            .map_err(|e| e.to_string())?;
        let exchange = async {
            let response = self
                .http
                .request(request)
                .await
                .map_err(|e| e.to_string())?;
            let status = response.status();
            let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(REQUEST_TIMEOUT, exchange)
            .await
            .map_err(|_| format!("no answer within {REQUEST_TIMEOUT:?}"))??;
        if !status.is_success() {
            return Err(format!("HTTP {status}"));
        }
        parse(&body, Instant::now())
    }
}

fn endpoint(address: &str, query: &Query<'_>) -> Result<Uri, String> {
    let params = [
        ("remote_ip", query.remote_ip.as_str()),
        ("tls", if query.tls { "true" } else { "false" }),
        ("secret", query.secret),
        ("common_name", query.common_name),
    ];
    let mut encoded = String::new();
    for (i, (k, v)) in params.iter().enumerate() {
        if i > 0 {
            encoded.push('&');
        }
        encoded.push_str(k);
        encoded.push('=');
        encoded.push_str(&url_encode(v));
    }
    let text = if address.contains("://") {
        format!("{address}?{encoded}")
    } else {
        format!("http://{address}/auth?{encoded}")
    };
    text.parse().map_err(|e| format!("bad address: {e}"))
}

/// Percent-encodes a query value as Go's `url.Values.Encode` does (space as `+`).
fn url_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Checks an answer as nsqd does: known permissions, compiling expressions, a positive TTL.
fn parse(body: &[u8], now: Instant) -> Result<Answer, String> {
    let raw: RawAnswer =
        serde_json::from_slice(body).map_err(|e| format!("the answer is not valid JSON: {e}"))?;
    if raw.ttl <= 0 {
        return Err(format!("invalid TTL {} (must be >0)", raw.ttl));
    }
    let mut list = Vec::with_capacity(raw.authorizations.len());
    for a in raw.authorizations {
        let (mut publish, mut subscribe) = (false, false);
        for p in &a.permissions {
            match p.as_str() {
                "publish" => publish = true,
                "subscribe" => subscribe = true,
                other => return Err(format!("unknown permission {other}")),
            }
        }
        let compile =
            |text: &str| Regex::new(text).map_err(|e| format!("unable to compile {text:?}: {e}"));
        list.push(Authorization {
            topic: compile(&a.topic)?,
            channels: a
                .channels
                .iter()
                .map(|c| compile(c))
                .collect::<Result<_, _>>()?,
            publish,
            subscribe,
        });
    }
    Ok(Answer {
        identity: raw.identity,
        identity_url: raw.identity_url,
        grants: Arc::new(ServerGrants { list }),
        expires: now + Duration::from_secs(raw.ttl as u64),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::message::{ChannelName, TopicName};

    #[test]
    fn answers_are_checked_and_applied_as_nsqd_does() {
        let body = br#"{"ttl": 60, "identity": "bob", "identity_url": "http://x/bob",
            "authorizations": [
              {"topic": "^orders$", "channels": [".*"], "permissions": ["publish", "subscribe"]},
              {"topic": "audit", "channels": ["^ro$"], "permissions": ["subscribe"]}]}"#;
        let answer = parse(body, Instant::now()).unwrap();
        assert_eq!(answer.identity, "bob");
        let g = &answer.grants;
        let t = |n: &str| TopicName::new(n).unwrap();
        let c = |n: &str| ChannelName::new(n).unwrap();
        assert!(g.allows(&Operation::Publish(&t("orders"))));
        assert!(!g.allows(&Operation::Publish(&t("orders2"))));
        assert!(g.allows(&Operation::Subscribe(&t("orders"), &c("any"))));
        // Unanchored, as Go's MatchString.
        assert!(g.allows(&Operation::Subscribe(&t("x-audit-y"), &c("ro"))));
        assert!(!g.allows(&Operation::Publish(&t("audit"))));
        assert!(!g.allows(&Operation::Admin(&t("orders"), None)));
    }

    #[test]
    fn bad_answers_are_refused() {
        let now = Instant::now();
        assert!(parse(br#"{"ttl": 0}"#, now).unwrap_err().contains("TTL"));
        let unknown = br#"{"ttl": 1, "authorizations": [{"topic": ".*", "channels": [], "permissions": ["admin"]}]}"#;
        assert!(parse(unknown, now)
            .unwrap_err()
            .contains("unknown permission"));
        let bad =
            br#"{"ttl": 1, "authorizations": [{"topic": "(", "channels": [], "permissions": []}]}"#;
        assert!(parse(bad, now).unwrap_err().contains("compile"));
        assert!(parse(b"nope", now).is_err());
    }

    #[test]
    fn the_query_is_nsqds() {
        let q = Query {
            remote_ip: "10.0.0.1".into(),
            tls: true,
            common_name: "a b",
            secret: "s&=/",
        };
        let uri = endpoint("127.0.0.1:4181", &q).unwrap();
        assert_eq!(
            uri.to_string(),
            "http://127.0.0.1:4181/auth?remote_ip=10.0.0.1&tls=true&secret=s%26%3D%2F&common_name=a+b"
        );
        let full = endpoint("http://h:1/check", &q).unwrap();
        assert!(full.to_string().starts_with("http://h:1/check?remote_ip="));
    }
}
