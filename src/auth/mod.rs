//! Authentication: who a caller is, from what it presented. Every entry point asks this
//! module once per connection (QUIC, NSQ TCP) or request (the HTTP APIs) and hands the
//! resulting [`Principal`] to the broker, which decides what it may do
//! ([`crate::broker::Access`], fed by the grants in [`acl`]).
//!
//! Three ways to authenticate, each optional, all combinable:
//! - a verified TLS client certificate ([`certificate_identity`]: SAN, else CN);
//! - a token named in `[[auth.token]]`, stored as its SHA-256 ([`hash_token`]);
//! - a secret an nsqd-style auth server accepts ([`server`]), whose answer holds for its
//!   TTL and is then asked for again ([`Credentials::current`]).
//!
//! A caller that presents nothing is [`Principal::anonymous`]. Failed attempts from one
//! address are answered more and more slowly ([`Throttle`]).

pub mod acl;
mod cert;
pub mod server;
mod throttle;

pub use cert::{certificate_identity, CertIdentity};
pub use throttle::Throttle;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::broker::{AuthMethod, Principal};
use server::{AuthServer, Query};

/// `[auth]`: how callers authenticate. With none of it set (and no `tls.client_ca`), every
/// caller is anonymous and allowed everything, which `quiver serve` accepts only on loopback
/// addresses unless `allow_anonymous` is set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// Serve non-loopback listeners without authentication (a warning is logged at start).
    /// With authentication configured, it has no effect: anonymous callers get what the
    /// grants give the identity `anonymous`.
    pub allow_anonymous: bool,
    /// nsqd-style auth servers (`host:port`, or a full URL), asked in turn.
    pub auth_http_address: Vec<String>,
    /// Named tokens, each stored as the hex SHA-256 of its secret (`quiver auth token`).
    pub token: Vec<TokenConfig>,
    /// Host names (with or without a port) the HTTP APIs answer to besides their own
    /// address and loopback names, for deployments behind a DNS name.
    pub http_hosts: Vec<String>,
}

/// One `[[auth.token]]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    /// The identity the token authenticates as.
    pub name: String,
    /// Hex SHA-256 of the secret.
    pub sha256: String,
}

impl AuthConfig {
    /// Whether any way to authenticate is configured (mTLS counts).
    pub fn is_configured(&self, mtls: bool) -> bool {
        mtls || !self.token.is_empty() || !self.auth_http_address.is_empty()
    }

    /// Checks the tokens: a name, a 64-digit hex hash, no name or hash twice.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let mut seen = HashMap::new();
        for (i, t) in self.token.iter().enumerate() {
            let field = format!("auth.token[{i}]");
            if t.name.is_empty() || t.name.chars().any(char::is_whitespace) {
                return Err((field, "name must be non-empty and hold no spaces".into()));
            }
            if parse_hash(&t.sha256).is_none() {
                return Err((
                    field,
                    "sha256 must be 64 hex digits (make one with `quiver auth token NAME`)".into(),
                ));
            }
            if let Some(other) = seen.insert(t.sha256.to_ascii_lowercase(), &t.name) {
                return Err((field, format!("the same secret as token {other:?}")));
            }
        }
        if self.auth_http_address.iter().any(|a| a.trim().is_empty()) {
            return Err(("auth.auth_http_address".into(), "an empty address".into()));
        }
        Ok(())
    }
}

/// Why credentials were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the token or secret is not valid")]
    Refused,
    #[error("no auth server could be asked: {0}")]
    ServerUnavailable(String),
    #[error("the auth server found no authorizations for the secret")]
    NoAuthorizations,
    #[error("no token or auth server is configured")]
    Disabled,
}

/// The hex SHA-256 of a token's secret, as `[[auth.token]] sha256` holds it.
pub fn hash_token(secret: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

fn parse_hash(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// A new random secret for a token: 32 bytes, base64url.
pub fn new_secret() -> Result<String, AuthError> {
    use base64::Engine as _;
    use ring::rand::SecureRandom as _;
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| AuthError::Disabled)?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// The broker's authentication settings, shared by every entry point.
#[derive(Debug)]
pub struct Authenticator {
    /// SHA-256 of a secret → the token's name.
    tokens: HashMap<[u8; 32], String>,
    server: Option<AuthServer>,
    enabled: bool,
    throttle: Throttle,
    http_hosts: Vec<String>,
    /// The auth server's answers to HTTP requests, kept until their TTL: each request would
    /// otherwise ask the server again.
    answers: Mutex<HashMap<[u8; 32], LoggedIn>>,
}

/// The most answers [`Authenticator::login_request`] keeps; when full, expired ones are
/// dropped first, then all of them.
const MAX_CACHED_ANSWERS: usize = 1024;

/// What an entry point knows of a connection before any secret.
#[derive(Debug, Clone)]
pub struct Connection {
    pub remote: SocketAddr,
    pub tls: bool,
    /// The verified client certificate's identity, if one was presented.
    pub certificate: Option<CertIdentity>,
}

/// An accepted secret.
#[derive(Debug, Clone)]
pub struct LoggedIn {
    pub principal: Arc<Principal>,
    /// The auth server's `identity_url`, empty otherwise.
    pub identity_url: String,
    /// How many authorizations the auth server answered with (0 for a token).
    pub permission_count: usize,
}

impl Authenticator {
    pub fn new(config: &AuthConfig, mtls: bool) -> Authenticator {
        let tokens = config
            .token
            .iter()
            .filter_map(|t| Some((parse_hash(&t.sha256.to_ascii_lowercase())?, t.name.clone())))
            .collect();
        let server = (!config.auth_http_address.is_empty())
            .then(|| AuthServer::new(config.auth_http_address.clone()));
        Authenticator {
            tokens,
            server,
            enabled: config.is_configured(mtls),
            throttle: Throttle::default(),
            http_hosts: config.http_hosts.clone(),
            answers: Mutex::default(),
        }
    }

    /// No authentication: everyone is anonymous and nothing is checked.
    pub fn disabled() -> Authenticator {
        Authenticator::new(&AuthConfig::default(), false)
    }

    /// Whether callers authenticate at all (the broker then checks every operation).
    pub fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// Whether secrets can be presented (tokens or an auth server): NSQ's `auth_required`.
    pub fn takes_secrets(&self) -> bool {
        !self.tokens.is_empty() || self.server.is_some()
    }

    /// Extra host names the HTTP APIs accept.
    pub fn http_hosts(&self) -> &[String] {
        &self.http_hosts
    }

    pub fn throttle(&self) -> &Throttle {
        &self.throttle
    }

    /// Who a connection is before it presents a secret: its certificate's identity, or
    /// anonymous.
    pub fn principal(&self, conn: &Connection) -> Principal {
        let remote = conn.remote.to_string();
        match &conn.certificate {
            Some(cert) => Principal::new(cert.identity.clone(), AuthMethod::Certificate, remote),
            None => Principal::anonymous(remote),
        }
    }

    /// Checks a secret: a configured token first, then the auth server. A refusal is
    /// recorded against the remote address; the caller waits
    /// [`Throttle::delay`] before answering it.
    /// An auth server that cannot be asked is not the caller's fault: it is not throttled.
    pub async fn login(&self, secret: &str, conn: &Connection) -> Result<LoggedIn, AuthError> {
        let result = self.check(secret, conn).await;
        match &result {
            Ok(_) => self.throttle.succeeded(conn.remote.ip()),
            Err(AuthError::ServerUnavailable(_)) => {}
            Err(_) => self.throttle.failed(conn.remote.ip()),
        }
        result
    }

    /// [`Authenticator::login`] for one HTTP request: an auth server's answer for the same
    /// secret, address and certificate is reused until its TTL ends, as a connection keeps
    /// it; the principal is new, with this request's remote address.
    pub async fn login_request(
        &self,
        secret: &str,
        conn: &Connection,
    ) -> Result<LoggedIn, AuthError> {
        let key = answer_key(secret, conn);
        let now = Instant::now();
        let cached = self.cached_answers().get(&key).cloned();
        if let Some(answer) = cached.filter(|a| a.principal.expires().is_some_and(|at| at > now)) {
            let principal = answer.principal.for_remote(conn.remote.to_string());
            return Ok(LoggedIn {
                principal: Arc::new(principal),
                ..answer
            });
        }
        let logged_in = self.login(secret, conn).await?;
        if logged_in.principal.expires().is_some() {
            let mut answers = self.cached_answers();
            if answers.len() >= MAX_CACHED_ANSWERS {
                answers.retain(|_, a| a.principal.expires().is_some_and(|at| at > now));
                if answers.len() >= MAX_CACHED_ANSWERS {
                    answers.clear();
                }
            }
            answers.insert(key, logged_in.clone());
        }
        Ok(logged_in)
    }

    fn cached_answers(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], LoggedIn>> {
        // Critical sections are single map operations.
        self.answers.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn check(&self, secret: &str, conn: &Connection) -> Result<LoggedIn, AuthError> {
        let remote = conn.remote.to_string();
        let digest = ring::digest::digest(&ring::digest::SHA256, secret.as_bytes());
        let found = self
            .tokens
            .iter()
            .find(|(hash, _)| ring_eq(hash.as_slice(), digest.as_ref()));
        if let Some((_, name)) = found {
            return Ok(LoggedIn {
                principal: Arc::new(Principal::new(name.clone(), AuthMethod::Token, remote)),
                identity_url: String::new(),
                permission_count: 0,
            });
        }
        let Some(server) = &self.server else {
            return Err(if self.tokens.is_empty() {
                AuthError::Disabled
            } else {
                AuthError::Refused
            });
        };
        let common_name = conn
            .certificate
            .as_ref()
            .map_or("", |c| c.common_name.as_str());
        let answer = server
            .ask(&Query {
                remote_ip: conn.remote.ip().to_string(),
                tls: conn.tls,
                common_name,
                secret,
            })
            .await?;
        if answer.grants.is_empty() {
            return Err(AuthError::NoAuthorizations);
        }
        let permission_count = answer.grants.len();
        let principal = Principal::new(answer.identity, AuthMethod::AuthServer, remote)
            .with_grants(answer.grants, answer.expires);
        Ok(LoggedIn {
            principal: Arc::new(principal),
            identity_url: answer.identity_url,
            permission_count,
        })
    }
}

/// What an auth server's answer depends on, hashed: the secret, the address and the
/// certificate, as nsqd's query sends them.
fn answer_key(secret: &str, conn: &Connection) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let common_name = conn
        .certificate
        .as_ref()
        .map_or("", |c| c.common_name.as_str());
    for part in [
        secret.as_bytes(),
        conn.remote.ip().to_string().as_bytes(),
        &[u8::from(conn.tls)],
        common_name.as_bytes(),
    ] {
        ctx.update(&(part.len() as u64).to_le_bytes());
        ctx.update(part);
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(ctx.finish().as_ref());
    key
}

/// Compares two digests in constant time.
fn ring_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// One connection's credentials: who it is now, and the secret to ask again with when an
/// auth server's answer expires.
#[derive(Debug)]
pub struct Credentials {
    auth: Arc<Authenticator>,
    conn: Connection,
    secret: Option<String>,
    principal: Arc<Principal>,
}

impl Credentials {
    pub fn new(auth: Arc<Authenticator>, conn: Connection) -> Credentials {
        let principal = Arc::new(auth.principal(&conn));
        Credentials {
            auth,
            conn,
            secret: None,
            principal,
        }
    }

    pub fn authenticator(&self) -> &Arc<Authenticator> {
        &self.auth
    }

    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// Whether a secret was accepted on this connection.
    pub fn has_secret(&self) -> bool {
        self.secret.is_some()
    }

    /// Presents a secret; on success the connection is that principal from now on.
    pub async fn authenticate(&mut self, secret: String) -> Result<LoggedIn, AuthError> {
        let logged_in = self.auth.login(&secret, &self.conn).await?;
        tracing::info!(target: "quiver::audit", principal = logged_in.principal.identity(), method = logged_in.principal.method().as_str(), remote = %self.conn.remote, "authenticated");
        self.principal = Arc::clone(&logged_in.principal);
        self.secret = Some(secret);
        Ok(logged_in)
    }

    /// The principal in force, asking the auth server again first when its answer expired.
    pub async fn current(&mut self) -> Result<Arc<Principal>, AuthError> {
        let expired = self
            .principal
            .expires()
            .is_some_and(|at| at <= Instant::now());
        if let (true, Some(secret)) = (expired, self.secret.clone()) {
            let logged_in = self.auth.login(&secret, &self.conn).await?;
            tracing::debug!(principal = logged_in.principal.identity(), remote = %self.conn.remote, "auth server asked again");
            self.principal = logged_in.principal;
        }
        Ok(Arc::clone(&self.principal))
    }

    /// The principal as last authenticated, without asking again.
    pub fn principal(&self) -> &Arc<Principal> {
        &self.principal
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn conn() -> Connection {
        Connection {
            remote: "127.0.0.1:5000".parse().unwrap(),
            tls: false,
            certificate: None,
        }
    }

    #[tokio::test]
    async fn tokens_are_checked_by_their_hash() {
        let config = AuthConfig {
            token: vec![TokenConfig {
                name: "billing".into(),
                sha256: hash_token("s3cret"),
            }],
            ..AuthConfig::default()
        };
        config.validate().unwrap();
        let auth = Authenticator::new(&config, false);
        assert!(auth.is_enabled() && auth.takes_secrets());
        let ok = auth.login("s3cret", &conn()).await.unwrap();
        assert_eq!(ok.principal.identity(), "billing");
        assert_eq!(ok.principal.method(), AuthMethod::Token);
        assert_eq!(
            auth.login("wrong", &conn()).await.unwrap_err(),
            AuthError::Refused
        );
    }

    #[test]
    fn bad_token_configs_name_the_field() {
        let config = AuthConfig {
            token: vec![TokenConfig {
                name: "x".into(),
                sha256: "abc".into(),
            }],
            ..AuthConfig::default()
        };
        let (field, why) = config.validate().unwrap_err();
        assert_eq!(field, "auth.token[0]");
        assert!(why.contains("64 hex digits"));
    }

    #[test]
    fn secrets_are_random_and_hashes_are_hex() {
        let (a, b) = (new_secret().unwrap(), new_secret().unwrap());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(parse_hash(&hash_token(&a)).is_some());
    }
}
