//! The front door of both HTTP APIs (the admin API and the nsqd API): every request passes
//! here before any handler, which then finds the caller's [`Principal`] in its extensions.
//!
//! In order:
//! 1. **Cross-site requests are refused** (403). A browser page on another site can send a
//!    simple POST without any preflight, and a DNS-rebinding page can reach a loopback
//!    listener under its own host name. So a request is refused when its `Host` names neither
//!    an IP address, `localhost`, nor one of `[auth] http_hosts`; when its `Origin` (sent by
//!    browsers on every cross-origin request and every POST) does not name the `Host` it was
//!    sent to; or when `Sec-Fetch-Site` says `cross-site` or `same-site`. Clients that are
//!    not browsers send no `Origin` and are not affected. No CORS header is ever sent.
//! 2. **Authentication**: `Authorization: Bearer <secret>` is checked (a token, else the auth
//!    server); a bad one gets 401 after the address's [`Throttle`](crate::auth::Throttle)
//!    delay. No header at all is the anonymous principal.
//!
//! What the principal may then do is the broker's decision, in the handlers' broker calls.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::header::{AUTHORIZATION, HOST, ORIGIN, WWW_AUTHENTICATE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::auth::{AuthError, Authenticator, Connection};
use crate::broker::Broker;

/// Why the guard refused a request, rendered by each API in its own error format.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// 403: a cross-site request, or a foreign `Host`.
    CrossSite(String),
    /// 401: the credentials presented were not accepted.
    BadCredentials(String),
    /// 503: no auth server could be asked about the credentials; nothing was done.
    Unavailable(String),
}

impl Refusal {
    pub(crate) fn status(&self) -> StatusCode {
        match self {
            Refusal::CrossSite(_) => StatusCode::FORBIDDEN,
            Refusal::BadCredentials(_) => StatusCode::UNAUTHORIZED,
            Refusal::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }

    pub(crate) fn message(&self) -> &str {
        match self {
            Refusal::CrossSite(m) | Refusal::BadCredentials(m) | Refusal::Unavailable(m) => m,
        }
    }
}

/// What the guard needs, and how its API renders a refusal.
#[derive(Clone)]
pub(crate) struct Guard {
    pub(crate) auth: Arc<Authenticator>,
    pub(crate) broker: Broker,
    pub(crate) render: fn(&Refusal) -> Response,
}

impl std::fmt::Debug for Guard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guard").finish_non_exhaustive()
    }
}

/// The middleware: checks the request, then runs the handler with its principal.
pub(crate) async fn check(
    State(guard): State<Guard>,
    mut request: Request,
    next: Next,
) -> Response {
    let remote = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or(SocketAddr::from(([127, 0, 0, 1], 0)), |c| c.0);
    if let Err(refusal) = same_site(request.headers(), guard.auth.http_hosts()) {
        guard.broker.count_auth_failure();
        tracing::warn!(target: "quiver::audit", %remote, method = %request.method(), path = request.uri().path(), reason = refusal.message(), "cross-site request refused");
        return (guard.render)(&refusal);
    }
    let conn = Connection {
        remote,
        tls: false,
        certificate: None,
    };
    let principal = match bearer(request.headers()) {
        Ok(None) => Arc::new(guard.auth.principal(&conn)),
        Ok(Some(secret)) => match guard.auth.login_request(secret, &conn).await {
            Ok(logged_in) => logged_in.principal,
            Err(e @ AuthError::ServerUnavailable(_)) => {
                guard.broker.count_auth_failure();
                tracing::error!(target: "quiver::audit", %remote, path = request.uri().path(), error = %e, "authentication impossible");
                return (guard.render)(&Refusal::Unavailable(format!(
                    "cannot authenticate now: {e}"
                )));
            }
            Err(e) => {
                guard.broker.count_auth_failure();
                tracing::warn!(target: "quiver::audit", %remote, path = request.uri().path(), error = %e, "authentication failed");
                tokio::time::sleep(guard.auth.throttle().delay(remote.ip())).await;
                return unauthorized(
                    &guard,
                    Refusal::BadCredentials(format!("authentication failed: {e}")),
                );
            }
        },
        Err(why) => {
            guard.broker.count_auth_failure();
            return unauthorized(&guard, Refusal::BadCredentials(why.into()));
        }
    };
    request.extensions_mut().insert(principal);
    next.run(request).await
}

fn unauthorized(guard: &Guard, refusal: Refusal) -> Response {
    let mut response = (guard.render)(&refusal);
    response
        .headers_mut()
        .insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The secret of an `Authorization: Bearer` header, if there is one.
fn bearer(headers: &HeaderMap) -> Result<Option<&str>, &'static str> {
    let Some(value) = headers.get(AUTHORIZATION) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| "the Authorization header is not text")?;
    let (scheme, secret) = text
        .split_once(' ')
        .ok_or("the Authorization header must be `Bearer <token>`")?;
    if !scheme.eq_ignore_ascii_case("bearer") || secret.trim().is_empty() {
        return Err("the Authorization header must be `Bearer <token>`");
    }
    Ok(Some(secret.trim()))
}

/// Refuses requests a browser sent from another site, and `Host`s that are not ours.
pub(crate) fn same_site(headers: &HeaderMap, names: &[String]) -> Result<(), Refusal> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v: &HeaderValue| v.to_str().ok())
    };
    let host = header(HOST.as_str());
    if let Some(host) = host {
        if !host_allowed(host, names) {
            return Err(Refusal::CrossSite(format!(
                "Host {host:?} is not this listener's address; add the name to [auth] http_hosts to allow it"
            )));
        }
    }
    if let Some(site) = header("sec-fetch-site") {
        if site.eq_ignore_ascii_case("cross-site") || site.eq_ignore_ascii_case("same-site") {
            return Err(Refusal::CrossSite(format!(
                "a {site} request from a browser is refused"
            )));
        }
    }
    if let Some(origin) = headers.get(ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin
            .split_once("://")
            .map(|(_, rest)| rest.trim_end_matches('/'));
        let same = match (authority, host) {
            (Some(authority), Some(host)) => authority.eq_ignore_ascii_case(host),
            _ => false,
        };
        if !same {
            return Err(Refusal::CrossSite(format!(
                "a cross-site request (Origin {origin:?}) is refused"
            )));
        }
    }
    Ok(())
}

/// An IP address, `localhost`, or a configured name; with any port.
fn host_allowed(host: &str, names: &[String]) -> bool {
    let name = match host.rsplit_once(':') {
        // `[::1]:7401`, `[::1]`, `127.0.0.1:7401`, `name:7401`.
        Some((name, port)) if !port.contains(']') && port.chars().all(|c| c.is_ascii_digit()) => {
            name
        }
        _ => host,
    };
    let bare = name.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<IpAddr>().is_ok()
        || bare.eq_ignore_ascii_case("localhost")
        || names
            .iter()
            .any(|n| n.eq_ignore_ascii_case(host) || n.eq_ignore_ascii_case(bare))
}

/// A refusal as the admin API answers errors: `{"error", "code"}`.
pub(crate) fn render_admin(refusal: &Refusal) -> Response {
    let code = match refusal {
        Refusal::CrossSite(_) => "E_FORBIDDEN",
        Refusal::BadCredentials(_) => "E_AUTH_FAILED",
        Refusal::Unavailable(_) => "E_AUTH_UNAVAILABLE",
    };
    let body = serde_json::json!({ "error": refusal.message(), "code": code });
    (refusal.status(), axum::Json(body)).into_response()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn foreign_hosts_and_origins_are_refused() {
        let none: Vec<String> = vec![];
        let ok = |pairs| same_site(&headers(pairs), &none).is_ok();
        assert!(ok(&[("host", "127.0.0.1:7401")]));
        assert!(ok(&[("host", "localhost:7401")]));
        assert!(ok(&[("host", "[::1]:7401")]));
        assert!(ok(&[("host", "10.1.2.3")]));
        assert!(ok(&[]));
        assert!(!ok(&[("host", "attacker.example:7401")]));
        assert!(!ok(&[
            ("host", "127.0.0.1:7401"),
            ("origin", "http://evil.example")
        ]));
        assert!(!ok(&[("host", "127.0.0.1:7401"), ("origin", "null")]));
        assert!(ok(&[
            ("host", "127.0.0.1:7401"),
            ("origin", "http://127.0.0.1:7401")
        ]));
        assert!(!ok(&[
            ("host", "127.0.0.1:7401"),
            ("sec-fetch-site", "cross-site")
        ]));
        assert!(ok(&[
            ("host", "127.0.0.1:7401"),
            ("sec-fetch-site", "same-origin")
        ]));
    }

    #[test]
    fn configured_names_are_allowed() {
        let names = vec!["quiver.internal".to_string()];
        let h = headers(&[
            ("host", "quiver.internal:7401"),
            ("origin", "https://quiver.internal:7401"),
        ]);
        assert!(same_site(&h, &names).is_ok());
        let h = headers(&[("host", "other.internal:7401")]);
        assert!(same_site(&h, &names).is_err());
    }

    #[test]
    fn bearer_headers_are_parsed() {
        assert_eq!(bearer(&headers(&[])), Ok(None));
        assert_eq!(
            bearer(&headers(&[("authorization", "Bearer abc")])),
            Ok(Some("abc"))
        );
        assert_eq!(
            bearer(&headers(&[("authorization", "bearer  abc ")])),
            Ok(Some("abc"))
        );
        assert!(bearer(&headers(&[("authorization", "Basic abc")])).is_err());
        assert!(bearer(&headers(&[("authorization", "Bearer ")])).is_err());
    }
}
