//! Where messages go: the endpoints (parsed once), how a message becomes a request, and one
//! attempt's requests (one URL in round-robin mode, all of them in fan-out mode).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, USER_AGENT};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;

use super::progress::Counters;
use super::{ToHttpArgs, ToHttpError};
use crate::message::Delivery;
use crate::session::error_chain;

const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";
const MESSAGE_ID: HeaderName = HeaderName::from_static("quiver-message-id");
const ATTEMPTS: HeaderName = HeaderName::from_static("quiver-attempts");

/// How an attempt picks its URLs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Each attempt goes to the next URL in turn, so a retry usually tries another one.
    RoundRobin,
    /// Each attempt goes to every URL; the message is FIN'd only if all answered 2xx.
    #[value(alias = "multicast")]
    Fanout,
}

/// Why an attempt failed. Every failure REQs the message (or dead-letters it on its last
/// attempt).
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("{url} answered {status}")]
    Status { url: Arc<str>, status: StatusCode },
    #[error("{url} did not answer within {after:?}")]
    Timeout { url: Arc<str>, after: Duration },
    #[error("{url}: {reason}")]
    Request { url: Arc<str>, reason: String },
    #[error("{}", join(.0))]
    Several(Vec<Failure>),
    #[error("attempts exhausted ({attempts}) before this delivery")]
    Exhausted { attempts: u16 },
    /// Received after the drain began: given back untried.
    #[error("not sent: shutting down")]
    ShuttingDown,
}

fn join(failures: &[Failure]) -> String {
    let mut text = String::new();
    for (i, f) in failures.iter().enumerate() {
        if i > 0 {
            text.push_str("; ");
        }
        let _ = write!(text, "{f}");
    }
    text
}

/// A URL as given, and what requests are built from: the whole URL for POST, or the parts
/// around `%s` for GET.
#[derive(Debug)]
struct Endpoint {
    url: Arc<str>,
    /// POST: the parsed URL. GET: `None`; the URL is built per message.
    uri: Option<Uri>,
    prefix: String,
    suffix: String,
}

/// The endpoints, the request shape and the HTTP client.
#[derive(Debug)]
pub struct Targets {
    method: Method,
    endpoints: Vec<Endpoint>,
    mode: Mode,
    content_type: HeaderValue,
    headers: Vec<(HeaderName, HeaderValue)>,
    timeout: Duration,
    http: HttpClient<HttpConnector, Full<Bytes>>,
    next: AtomicUsize,
}

impl Targets {
    pub fn new(args: &ToHttpArgs) -> Result<Targets, ToHttpError> {
        let (method, urls, option) = if args.get.is_empty() {
            (Method::POST, &args.post, "--post")
        } else {
            (Method::GET, &args.get, "--get")
        };
        if urls.is_empty() {
            return Err(invalid("--post", "", "give --post URL or --get URL"));
        }
        let endpoints = urls
            .iter()
            .map(|url| Endpoint::parse(option, url, method == Method::GET))
            .collect::<Result<Vec<_>, _>>()?;
        let content_type = args.content_type.as_deref().unwrap_or(DEFAULT_CONTENT_TYPE);
        let content_type = HeaderValue::from_str(content_type)
            .map_err(|e| invalid("--content-type", content_type, &e.to_string()))?;
        let headers = args
            .headers
            .iter()
            .map(|h| parse_header(h))
            .collect::<Result<Vec<_>, _>>()?;
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(args.http_connect_timeout));
        connector.set_nodelay(true);
        let http = HttpClient::builder(TokioExecutor::new()).build(connector);
        Ok(Targets {
            method,
            endpoints,
            mode: args.mode,
            content_type,
            headers,
            timeout: args.http_timeout,
            http,
            next: AtomicUsize::new(0),
        })
    }

    /// E.g. `POST to http://a/ and http://b/ (fanout)`.
    pub fn describe(&self) -> String {
        let urls: Vec<&str> = self.endpoints.iter().map(|e| &*e.url).collect();
        let mode = match self.mode {
            Mode::RoundRobin => "round-robin",
            Mode::Fanout => "fanout",
        };
        format!("{} to {} ({mode})", self.method, urls.join(" and "))
    }

    /// One attempt: its request(s), all answered 2xx or not. Requests of a fan-out run at
    /// once.
    pub async fn send(&self, d: &Delivery, counters: &Counters) -> Result<(), Failure> {
        let picked: Vec<&Endpoint> = match self.mode {
            Mode::RoundRobin => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
                vec![&self.endpoints[i]]
            }
            Mode::Fanout => self.endpoints.iter().collect(),
        };
        let mut requests = JoinSet::new();
        let mut failures = Vec::new();
        for endpoint in picked {
            counters.request();
            match self.request(endpoint, d) {
                Ok(request) => {
                    let (http, url, timeout) =
                        (self.http.clone(), endpoint.url.clone(), self.timeout);
                    requests.spawn(exchange(http, request, url, timeout));
                }
                Err(failure) => failures.push(failure),
            }
        }
        while let Some(done) = requests.join_next().await {
            let result = done.unwrap_or_else(|e| {
                Err(Failure::Request {
                    url: "(request task)".into(),
                    reason: e.to_string(),
                })
            });
            if let Err(failure) = result {
                failures.push(failure);
            }
        }
        counters.failed(failures.len());
        match failures.len() {
            0 => Ok(()),
            1 => Err(failures.remove(0)),
            _ => Err(Failure::Several(failures)),
        }
    }

    fn request(&self, endpoint: &Endpoint, d: &Delivery) -> Result<Request<Full<Bytes>>, Failure> {
        let uri = match &endpoint.uri {
            Some(uri) => uri.clone(),
            None => {
                let url = format!(
                    "{}{}{}",
                    endpoint.prefix,
                    query_escape(&d.body),
                    endpoint.suffix
                );
                url.parse()
                    .map_err(|e: hyper::http::uri::InvalidUri| Failure::Request {
                        url: endpoint.url.clone(),
                        reason: e.to_string(),
                    })?
            }
        };
        let body = if self.method == Method::POST {
            d.body.clone()
        } else {
            Bytes::new()
        };
        let mut request = Request::new(Full::new(body));
        *request.method_mut() = self.method.clone();
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(USER_AGENT, HeaderValue::from_static(user_agent()));
        if let Ok(id) = HeaderValue::from_str(&d.id.to_string()) {
            headers.insert(MESSAGE_ID, id);
        }
        headers.insert(ATTEMPTS, HeaderValue::from(d.attempts));
        if self.method == Method::POST {
            headers.insert(CONTENT_TYPE, self.content_type.clone());
        }
        for (name, value) in &self.headers {
            headers.append(name.clone(), value.clone());
        }
        Ok(request)
    }
}

/// Sends one request and reads the whole response (so the connection can be reused), all
/// within `timeout`.
async fn exchange(
    http: HttpClient<HttpConnector, Full<Bytes>>,
    request: Request<Full<Bytes>>,
    url: Arc<str>,
    timeout: Duration,
) -> Result<(), Failure> {
    let failed = |reason: String| Failure::Request {
        url: url.clone(),
        reason,
    };
    let exchange = async {
        let response = http
            .request(request)
            .await
            .map_err(|e| failed(error_chain(&e)))?;
        let status = response.status();
        let mut body = response.into_body();
        while let Some(frame) = body.frame().await {
            frame.map_err(|e| failed(error_chain(&e)))?;
        }
        Ok(status)
    };
    let status = match tokio::time::timeout(timeout, exchange).await {
        Ok(result) => result?,
        Err(_) => {
            return Err(Failure::Timeout {
                url,
                after: timeout,
            })
        }
    };
    if status.is_success() {
        return Ok(());
    }
    Err(Failure::Status { url, status })
}

impl Endpoint {
    fn parse(option: &'static str, url: &str, get: bool) -> Result<Endpoint, ToHttpError> {
        let (prefix, suffix) = if get {
            if url.matches("%s").count() != 1 {
                return Err(invalid(option, url, "must contain %s exactly once"));
            }
            url.split_once("%s").unwrap_or((url, ""))
        } else {
            (url, "")
        };
        // A GET URL must parse with any escaped body in place of %s; escaped bodies use only
        // characters that are valid in a URL, so one sample stands for all.
        let sample = if get {
            format!("{prefix}x{suffix}")
        } else {
            url.to_string()
        };
        let uri: Uri = sample
            .parse()
            .map_err(|e: hyper::http::uri::InvalidUri| invalid(option, url, &e.to_string()))?;
        match uri.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(invalid(
                    option,
                    url,
                    "https is not supported yet; use http:// (e.g. to a local TLS proxy)",
                ))
            }
            _ => return Err(invalid(option, url, "must be an absolute http:// URL")),
        }
        if uri.host().is_none_or(str::is_empty) {
            return Err(invalid(option, url, "has no host"));
        }
        Ok(Endpoint {
            url: url.into(),
            uri: (!get).then_some(uri),
            prefix: prefix.to_string(),
            suffix: suffix.to_string(),
        })
    }
}

fn invalid(option: &'static str, value: &str, why: &str) -> ToHttpError {
    ToHttpError::InvalidOption {
        option,
        value: value.to_string(),
        why: why.to_string(),
    }
}

/// `Key: Value` (spaces around either are trimmed), as nsq_to_http's `--header`.
fn parse_header(text: &str) -> Result<(HeaderName, HeaderValue), ToHttpError> {
    let bad = |why: &str| invalid("--header", text, why);
    let (name, value) = text
        .split_once(':')
        .ok_or_else(|| bad("not 'Key: Value'"))?;
    let name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|e| bad(&e.to_string()))?;
    let value = HeaderValue::from_str(value.trim()).map_err(|e| bad(&e.to_string()))?;
    Ok((name, value))
}

fn user_agent() -> &'static str {
    concat!("quiver-to-http/", env!("CARGO_PKG_VERSION"))
}

/// Escapes `bytes` as a URL query component, as Go's `url.QueryEscape` does (what
/// nsq_to_http puts in place of `%s`): `A-Z a-z 0-9 - _ . ~` stay, a space becomes `+`,
/// every other byte becomes `%XX`.
pub fn query_escape(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(bytes.len() * 3);
    for &b in bytes {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(char::from(b));
            }
            b' ' => out.push('+'),
            _ => {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)]));
                out.push(char::from(HEX[usize::from(b & 0xf)]));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_escape_matches_go() {
        assert_eq!(query_escape(b"a b&c=d/e"), "a+b%26c%3Dd%2Fe");
        assert_eq!(query_escape("é~._-".as_bytes()), "%C3%A9~._-");
        assert_eq!(query_escape(b"\x00\xff+%"), "%00%FF%2B%25");
        assert_eq!(query_escape(b""), "");
    }

    #[test]
    fn get_urls_need_exactly_one_placeholder() {
        assert!(Endpoint::parse("--get", "http://h/?m=%s", true).is_ok());
        assert!(Endpoint::parse("--get", "http://h/", true).is_err());
        assert!(Endpoint::parse("--get", "http://h/%s?m=%s", true).is_err());
        let e = Endpoint::parse("--get", "http://h/a?m=%s&x=1", true).ok();
        let parts = e.map(|e| (e.prefix, e.suffix));
        assert_eq!(
            parts,
            Some(("http://h/a?m=".to_string(), "&x=1".to_string()))
        );
    }

    #[test]
    fn only_absolute_http_urls_are_taken() {
        let e = Endpoint::parse("--post", "http://127.0.0.1:8080/in?a=1", false).ok();
        let uri = e.and_then(|e| e.uri).map(|u| u.to_string());
        assert_eq!(uri.as_deref(), Some("http://127.0.0.1:8080/in?a=1"));
        for url in [
            "https://h/",
            "/relative",
            "ftp://h/",
            "http:///nohost",
            "not a url",
        ] {
            let err = Endpoint::parse("--post", url, false).err();
            assert!(err.is_some(), "{url} was accepted");
        }
    }

    #[test]
    fn headers_are_key_colon_value() {
        let (name, value) = parse_header(" X-Token :  abc: def ").ok().unzip();
        assert_eq!(name.map(|n| n.to_string()), Some("x-token".to_string()));
        assert_eq!(value, Some(HeaderValue::from_static("abc: def")));
        assert!(parse_header("no colon").is_err());
        assert!(parse_header("bad name: v").is_err());
        assert!(parse_header(": v").is_err());
    }

    #[test]
    fn several_failures_are_listed() {
        let failure = Failure::Several(vec![
            Failure::Status {
                url: "http://a/".into(),
                status: StatusCode::INTERNAL_SERVER_ERROR,
            },
            Failure::Timeout {
                url: "http://b/".into(),
                after: Duration::from_secs(1),
            },
        ]);
        assert_eq!(
            failure.to_string(),
            "http://a/ answered 500 Internal Server Error; http://b/ did not answer within 1s"
        );
    }
}
