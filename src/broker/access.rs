//! Who is calling, what they ask to do, and the one place where that is allowed or refused.
//!
//! Every entry point (a QUIC connection, an NSQ TCP connection, an admin or nsqd HTTP
//! request) builds a [`Principal`] once, from what it authenticated, and passes it to every
//! broker call that publishes, subscribes or administers. The broker asks its [`Access`]
//! hook (beside [`Router`](super::Router) and [`Gate`](super::Gate)) whether the principal
//! may perform the [`Operation`]; without one (no authentication configured) everything is
//! allowed, as on a broker that predates authentication.
//!
//! # Invariants
//! - A decision is made once per principal, operation and [`Access::generation`], and then
//!   cached in the principal: a publish pays a lookup in a small list, not a pattern match.
//! - When the grants change (a rules reload), the generation changes, so the next operation
//!   of every principal is decided again; open subscriptions are re-checked by
//!   [`Broker::recheck_access`](super::Broker::recheck_access) and the ones that lost their
//!   permission end with [`BrokerError::Denied`](super::BrokerError::Denied).

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use std::collections::HashMap;
use std::sync::MutexGuard;

use super::{subscription, Broker, BrokerError, ConsumerId};
use crate::message::{ChannelName, TopicName};

/// The identity every unauthenticated caller has. Grants may name it.
pub const ANONYMOUS: &str = "anonymous";

/// How a principal proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// Nothing was presented.
    Anonymous,
    /// A verified TLS client certificate (its SAN, else its CN).
    Certificate,
    /// A token named in the config (`[[auth.token]]`).
    Token,
    /// A secret the nsqd-style auth server accepted.
    AuthServer,
    /// The broker itself (the rules layer, tests): never checked.
    Internal,
}

impl AuthMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthMethod::Anonymous => "anonymous",
            AuthMethod::Certificate => "certificate",
            AuthMethod::Token => "token",
            AuthMethod::AuthServer => "auth-server",
            AuthMethod::Internal => "internal",
        }
    }
}

/// What a principal asks to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation<'a> {
    Publish(&'a TopicName),
    Subscribe(&'a TopicName, &'a ChannelName),
    /// Administration of a topic, or of one of its channels.
    Admin(&'a TopicName, Option<&'a ChannelName>),
    /// Administration of the whole broker: statistics of every topic, metrics, rules reload.
    /// Granted by `admin` on the topic pattern `*`.
    AdminAll,
}

/// The permission an [`Operation`] needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Permission {
    Publish,
    Subscribe,
    Admin,
}

impl Permission {
    pub fn as_str(self) -> &'static str {
        match self {
            Permission::Publish => "publish",
            Permission::Subscribe => "subscribe",
            Permission::Admin => "admin",
        }
    }
}

impl Operation<'_> {
    pub fn permission(&self) -> Permission {
        match self {
            Operation::Publish(_) => Permission::Publish,
            Operation::Subscribe(..) => Permission::Subscribe,
            Operation::Admin(..) | Operation::AdminAll => Permission::Admin,
        }
    }

    /// The topic the operation is on; `*` for the whole broker.
    pub fn topic(&self) -> &str {
        match self {
            Operation::Publish(t) | Operation::Subscribe(t, _) | Operation::Admin(t, _) => {
                t.as_str()
            }
            Operation::AdminAll => "*",
        }
    }

    /// The channel the operation is on, if any.
    pub fn channel(&self) -> Option<&str> {
        match self {
            Operation::Subscribe(_, c) => Some(c.as_str()),
            Operation::Admin(_, c) => c.map(|c| c.as_str()),
            _ => None,
        }
    }
}

impl fmt::Display for Operation<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let perm = self.permission().as_str();
        match self.channel() {
            Some(channel) => write!(f, "{perm} {}/{channel}", self.topic()),
            None => write!(f, "{perm} {}", self.topic()),
        }
    }
}

/// Permissions that come with a principal rather than from the broker's grants: the
/// authorizations an nsqd-style auth server answered with.
pub trait Grants: Send + Sync + fmt::Debug {
    fn allows(&self, op: &Operation<'_>) -> bool;
}

/// The hook the broker asks. Installed by whatever holds the grants (the rules layer).
pub trait Access: Send + Sync + fmt::Debug {
    /// Changes whenever the answer to [`Access::allows`] may change; decisions cached
    /// under an older generation are made again.
    fn generation(&self) -> u64;

    /// Whether `principal` may do `op`, by the grants in force.
    fn allows(&self, principal: &Principal, op: &Operation<'_>) -> bool;
}

/// Who is calling: built once per connection or request by the entry point.
pub struct Principal {
    identity: String,
    groups: Vec<String>,
    method: AuthMethod,
    remote: String,
    /// Authorizations from an auth server, and when they expire.
    grants: Option<(Arc<dyn Grants>, Instant)>,
    decisions: Mutex<Decisions>,
}

/// Most distinct operations a principal keeps decisions for; past that the list starts over.
const MAX_DECISIONS: usize = 64;

#[derive(Default)]
struct Decisions {
    generation: u64,
    list: Vec<(Permission, String, Option<String>, bool)>,
}

impl Principal {
    /// A caller that presented nothing.
    pub fn anonymous(remote: impl Into<String>) -> Principal {
        Principal::new(ANONYMOUS, AuthMethod::Anonymous, remote)
    }

    /// The broker's own calls, and tests: never refused.
    pub fn internal() -> Principal {
        Principal::new("quiver", AuthMethod::Internal, "")
    }

    pub fn new(identity: impl Into<String>, method: AuthMethod, remote: impl Into<String>) -> Self {
        Principal {
            identity: identity.into(),
            groups: Vec::new(),
            method,
            remote: remote.into(),
            grants: None,
            decisions: Mutex::new(Decisions::default()),
        }
    }

    /// Adds the groups the identity belongs to (from the token's configuration).
    pub fn with_groups(mut self, groups: Vec<String>) -> Self {
        self.groups = groups;
        self
    }

    /// Adds an auth server's authorizations, valid until `expires`.
    pub fn with_grants(mut self, grants: Arc<dyn Grants>, expires: Instant) -> Self {
        self.grants = Some((grants, expires));
        self
    }

    /// The same identity, method, groups and grants, calling from `remote`; decisions are
    /// not carried over.
    pub fn for_remote(&self, remote: impl Into<String>) -> Principal {
        Principal {
            identity: self.identity.clone(),
            groups: self.groups.clone(),
            method: self.method,
            remote: remote.into(),
            grants: self.grants.clone(),
            decisions: Mutex::new(Decisions::default()),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    pub fn groups(&self) -> &[String] {
        &self.groups
    }

    pub fn method(&self) -> AuthMethod {
        self.method
    }

    pub fn remote(&self) -> &str {
        &self.remote
    }

    pub fn is_anonymous(&self) -> bool {
        self.method == AuthMethod::Anonymous
    }

    /// When the auth server's answer expires and must be asked again.
    pub fn expires(&self) -> Option<Instant> {
        self.grants.as_ref().map(|(_, at)| *at)
    }

    /// Whether `op` is allowed, deciding once per generation of `access`.
    pub(super) fn allowed(&self, access: &dyn Access, op: &Operation<'_>) -> bool {
        if self.method == AuthMethod::Internal {
            return true;
        }
        let generation = access.generation();
        let (perm, topic, channel) = (op.permission(), op.topic(), op.channel());
        {
            let decisions = self.decisions();
            if decisions.generation == generation {
                let hit = decisions
                    .list
                    .iter()
                    .find(|(p, t, c, _)| *p == perm && t == topic && c.as_deref() == channel);
                if let Some(&(.., allowed)) = hit {
                    return allowed;
                }
            }
        }
        let allowed = access.allows(self, op)
            || self
                .grants
                .as_ref()
                .is_some_and(|(grants, _)| grants.allows(op));
        let mut decisions = self.decisions();
        if decisions.generation != generation || decisions.list.len() >= MAX_DECISIONS {
            decisions.generation = generation;
            decisions.list.clear();
        }
        let entry = (perm, topic.to_owned(), channel.map(str::to_owned), allowed);
        decisions.list.push(entry);
        allowed
    }

    fn decisions(&self) -> std::sync::MutexGuard<'_, Decisions> {
        // Every critical section is a lookup or a push: a panic cannot leave it half-done.
        self.decisions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl fmt::Debug for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Principal")
            .field("identity", &self.identity)
            .field("method", &self.method)
            .field("remote", &self.remote)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Principal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.identity, self.method.as_str())
    }
}

impl Broker {
    /// Installs the access hook: from then on every operation of a principal that is not
    /// [`Principal::internal`] needs a grant. Once per broker, before serving. Returns false
    /// if one was already set.
    pub fn set_access(&self, access: Arc<dyn Access>) -> bool {
        self.shared.access.set(access).is_ok()
    }

    /// Whether an access hook is installed (authentication is configured).
    pub fn checks_access(&self) -> bool {
        self.shared.access.get().is_some()
    }

    /// The one place where operations are allowed or refused. A refusal is logged once on
    /// the `quiver::audit` target and counted.
    pub fn authorize(&self, who: &Principal, op: Operation<'_>) -> Result<(), BrokerError> {
        let Some(access) = self.shared.access.get() else {
            return Ok(());
        };
        if who.allowed(&**access, &op) {
            return Ok(());
        }
        self.shared.access_stats.denied(op.permission());
        tracing::warn!(target: "quiver::audit", principal = who.identity(), method = who.method().as_str(), remote = who.remote(), operation = %op, "denied");
        Err(BrokerError::Denied {
            identity: who.identity().to_owned(),
            operation: op.to_string(),
            anonymous: who.is_anonymous(),
        })
    }

    /// Authorizes an administrative operation and records it in the audit log.
    pub fn administer(
        &self,
        who: &Principal,
        op: Operation<'_>,
        action: &str,
    ) -> Result<(), BrokerError> {
        self.authorize(who, op)?;
        if who.method() != AuthMethod::Internal {
            tracing::info!(target: "quiver::audit", principal = who.identity(), method = who.method().as_str(), remote = who.remote(), action, target = %op, "admin");
        }
        Ok(())
    }

    /// Counts a failed authentication (a wrong token, a refused secret) for the stats.
    pub fn count_auth_failure(&self) {
        self.shared.access_stats.auth_failure();
    }

    /// Re-checks every open subscription against the grants in force, and ends the ones
    /// that lost their permission with [`BrokerError::Denied`]. Call after the grants change.
    pub fn recheck_access(&self) -> usize {
        let Some(access) = self.shared.access.get() else {
            return 0;
        };
        let subscribers = self.subscribers();
        let mut revoked = 0;
        for sub in subscribers.values() {
            let op = Operation::Subscribe(&sub.topic, &sub.channel);
            if sub.principal.allowed(&**access, &op) {
                continue;
            }
            revoked += 1;
            self.shared.access_stats.denied(op.permission());
            tracing::warn!(target: "quiver::audit", principal = sub.principal.identity(), remote = sub.principal.remote(), operation = %op, "permission revoked; subscription closed");
            sub.revoke(BrokerError::Denied {
                identity: sub.principal.identity().to_owned(),
                operation: op.to_string(),
                anonymous: sub.principal.is_anonymous(),
            });
        }
        revoked
    }

    pub(super) fn subscribers(
        &self,
    ) -> MutexGuard<'_, HashMap<ConsumerId, subscription::Revocable>> {
        // Every critical section is an insert, a remove or a walk that only cancels tokens.
        self.shared
            .subscribers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

    #[derive(Debug, Default)]
    struct Counting {
        generation: AtomicU64,
        asked: AtomicUsize,
    }

    impl Access for Counting {
        fn generation(&self) -> u64 {
            self.generation.load(Ordering::Relaxed)
        }
        fn allows(&self, principal: &Principal, op: &Operation<'_>) -> bool {
            self.asked.fetch_add(1, Ordering::Relaxed);
            principal.identity() == "alice" && op.topic() == "orders"
        }
    }

    #[test]
    fn a_decision_is_made_once_per_generation() {
        let access = Counting::default();
        let alice = Principal::new("alice", AuthMethod::Token, "127.0.0.1:1");
        let orders = TopicName::new("orders").unwrap();
        let other = TopicName::new("other").unwrap();
        for _ in 0..10 {
            assert!(alice.allowed(&access, &Operation::Publish(&orders)));
            assert!(!alice.allowed(&access, &Operation::Publish(&other)));
        }
        assert_eq!(access.asked.load(Ordering::Relaxed), 2);
        access.generation.store(1, Ordering::Relaxed);
        assert!(alice.allowed(&access, &Operation::Publish(&orders)));
        assert_eq!(access.asked.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn internal_principals_are_never_asked_about() {
        let access = Counting::default();
        let t = TopicName::new("x").unwrap();
        assert!(Principal::internal().allowed(&access, &Operation::Publish(&t)));
        assert_eq!(access.asked.load(Ordering::Relaxed), 0);
    }

    #[derive(Debug)]
    struct Server;
    impl Grants for Server {
        fn allows(&self, op: &Operation<'_>) -> bool {
            op.permission() == Permission::Subscribe
        }
    }

    #[test]
    fn grants_carried_by_the_principal_add_to_the_hooks() {
        let access = Counting::default();
        let bob = Principal::new("bob", AuthMethod::AuthServer, "")
            .with_grants(Arc::new(Server), Instant::now());
        let (t, c) = (TopicName::new("t").unwrap(), ChannelName::new("c").unwrap());
        assert!(bob.allowed(&access, &Operation::Subscribe(&t, &c)));
        assert!(!bob.allowed(&access, &Operation::Publish(&t)));
    }
}
