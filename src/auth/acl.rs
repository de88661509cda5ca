//! Grants: which identities and groups may publish, subscribe or administer which topics and
//! channels. Written in the rules file (`[[grant]]` and `[groups]`), reloaded with it. Pure.
//!
//! A grant names subjects (`to`: identities, or `group:NAME`), topic patterns, channel
//! patterns and permissions. A pattern is a name in which `*` matches any run of characters
//! (`orders.*`, `*`); nothing else is special. An operation is allowed when one grant names
//! its identity or one of its groups, has its permission, matches its topic and, for an
//! operation on a channel, matches the channel. Administration of the whole broker (stats of
//! every topic, metrics, a rules reload) is `admin` on the topic `*`, which only the pattern
//! `*` matches.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::broker::{Operation, Permission, Principal};

/// A `[[grant]]` table as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGrant {
    /// Identities, and groups as `group:NAME`.
    pub to: Vec<String>,
    /// Topic patterns.
    pub topics: Vec<String>,
    /// Channel patterns, for `subscribe` and channel administration. Default: every channel.
    #[serde(default = "every")]
    pub channels: Vec<String>,
    pub permissions: Vec<Permission>,
}

fn every() -> Vec<String> {
    vec!["*".to_owned()]
}

/// The validated grants and groups in force.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    grants: Vec<Grant>,
    /// Group name → its members.
    groups: HashMap<String, Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Grant {
    identities: Vec<String>,
    groups: Vec<String>,
    topics: Vec<Pattern>,
    channels: Vec<Pattern>,
    permissions: Vec<Permission>,
}

impl Acl {
    /// Validates grants and groups; every problem is reported, each naming its grant.
    pub fn new(
        raw: &[RawGrant],
        groups: &HashMap<String, Vec<String>>,
    ) -> Result<Acl, Vec<String>> {
        let mut problems = Vec::new();
        let mut grants = Vec::with_capacity(raw.len());
        for (i, g) in raw.iter().enumerate() {
            let at = format!("grant {}", i + 1);
            if g.to.is_empty() {
                problems.push(format!("{at}: `to` names nobody"));
            }
            if g.topics.is_empty() {
                problems.push(format!("{at}: `topics` is empty"));
            }
            if g.permissions.is_empty() {
                problems.push(format!("{at}: `permissions` is empty"));
            }
            let mut grant = Grant {
                identities: Vec::new(),
                groups: Vec::new(),
                topics: Vec::new(),
                channels: Vec::new(),
                permissions: g.permissions.clone(),
            };
            for subject in &g.to {
                match subject.strip_prefix("group:") {
                    Some(group) if groups.contains_key(group) => grant.groups.push(group.into()),
                    Some(group) => {
                        problems.push(format!("{at}: group {group:?} is not defined in [groups]"))
                    }
                    None if subject.is_empty() => problems.push(format!("{at}: an empty identity")),
                    None => grant.identities.push(subject.clone()),
                }
            }
            for (list, out) in [
                (&g.topics, &mut grant.topics),
                (&g.channels, &mut grant.channels),
            ] {
                for text in list {
                    match Pattern::new(text) {
                        Ok(p) => out.push(p),
                        Err(why) => problems.push(format!("{at}: pattern {text:?} {why}")),
                    }
                }
            }
            grants.push(grant);
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Acl {
            grants,
            groups: groups.clone(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.grants.is_empty()
    }

    /// Whether some grant allows `principal` to do `op`.
    pub fn allows(&self, principal: &Principal, op: &Operation<'_>) -> bool {
        let identity = principal.identity();
        let member = |group: &String| {
            self.groups
                .get(group)
                .is_some_and(|members| members.iter().any(|m| m == identity))
        };
        let (permission, topic, channel) = (op.permission(), op.topic(), op.channel());
        self.grants.iter().any(|g| {
            g.permissions.contains(&permission)
                && (g.identities.iter().any(|i| i == identity) || g.groups.iter().any(member))
                && g.topics.iter().any(|p| p.matches(topic))
                && channel.is_none_or(|c| g.channels.iter().any(|p| p.matches(c)))
        })
    }
}

/// A name with `*` wildcards.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    /// The literal pieces between the `*`s.
    pieces: Vec<String>,
}

impl Pattern {
    pub fn new(text: &str) -> Result<Pattern, &'static str> {
        if text.is_empty() {
            return Err("is empty");
        }
        let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '#' | '*');
        if !text.chars().all(valid) {
            return Err("may hold only letters, digits, '.', '_', '-', '#' and '*'");
        }
        Ok(Pattern {
            pieces: text.split('*').map(str::to_owned).collect(),
        })
    }

    pub fn matches(&self, name: &str) -> bool {
        let (first, rest) = match self.pieces.split_first() {
            Some(split) => split,
            None => return false,
        };
        let Some(mut tail) = name.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return tail.is_empty();
        };
        for piece in middle {
            match tail.find(piece.as_str()) {
                Some(at) => tail = &tail[at + piece.len()..],
                None => return false,
            }
        }
        tail.len() >= last.len() && tail.ends_with(last.as_str())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::broker::AuthMethod;
    use crate::message::{ChannelName, TopicName};

    #[test]
    fn patterns_match_names_with_wildcards() {
        let p = |t: &str| Pattern::new(t).unwrap();
        assert!(p("*").matches("anything"));
        assert!(p("*").matches("*"));
        assert!(!p("orders.*").matches("*"));
        assert!(p("orders.*").matches("orders.eu"));
        assert!(!p("orders.*").matches("orders"));
        assert!(p("orders").matches("orders"));
        assert!(!p("orders").matches("orders2"));
        assert!(p("a*b*c").matches("a-b-c"));
        assert!(p("a*b*c").matches("abc"));
        assert!(!p("a*b*c").matches("acb"));
        assert!(p("*.dead").matches("t.dead"));
        assert!(!p("ab*ba").matches("aba"));
        assert!(Pattern::new("a b").is_err());
        assert!(Pattern::new("").is_err());
    }

    fn grant(to: &[&str], topics: &[&str], channels: &[&str], perms: &[Permission]) -> RawGrant {
        RawGrant {
            to: to.iter().map(|s| s.to_string()).collect(),
            topics: topics.iter().map(|s| s.to_string()).collect(),
            channels: channels.iter().map(|s| s.to_string()).collect(),
            permissions: perms.to_vec(),
        }
    }

    #[test]
    fn grants_allow_by_identity_group_permission_topic_and_channel() {
        let groups = HashMap::from([("ops".to_string(), vec!["carol".to_string()])]);
        let acl = Acl::new(
            &[
                grant(
                    &["alice"],
                    &["orders.*"],
                    &["billing"],
                    &[Permission::Publish, Permission::Subscribe],
                ),
                grant(&["group:ops"], &["*"], &["*"], &[Permission::Admin]),
            ],
            &groups,
        )
        .unwrap();
        let alice = Principal::new("alice", AuthMethod::Token, "");
        let carol = Principal::new("carol", AuthMethod::Certificate, "");
        let eu = TopicName::new("orders.eu").unwrap();
        let billing = ChannelName::new("billing").unwrap();
        let audit = ChannelName::new("audit").unwrap();
        assert!(acl.allows(&alice, &Operation::Publish(&eu)));
        assert!(acl.allows(&alice, &Operation::Subscribe(&eu, &billing)));
        assert!(!acl.allows(&alice, &Operation::Subscribe(&eu, &audit)));
        assert!(!acl.allows(&alice, &Operation::Admin(&eu, None)));
        assert!(!acl.allows(&alice, &Operation::AdminAll));
        assert!(acl.allows(&carol, &Operation::AdminAll));
        assert!(acl.allows(&carol, &Operation::Admin(&eu, Some(&audit))));
        assert!(!acl.allows(&carol, &Operation::Publish(&eu)));
    }

    #[test]
    fn every_problem_is_reported() {
        let problems = Acl::new(
            &[grant(&["group:nope"], &["bad pattern"], &["*"], &[])],
            &HashMap::new(),
        )
        .unwrap_err();
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems.iter().any(|p| p.contains("nope")));
        assert!(problems.iter().any(|p| p.contains("permissions")));
    }
}
