//! The `[cluster]` config section: who this node is, where its peers reach it, how it finds
//! the cluster (the initial `members`, or a running member to `join`), the cluster's
//! certificates, and the Raft timing.
//!
//! # Invariants
//! After [`ClusterSettings::validate`]: `node_id` is at least 1; exactly one of `members`
//! and `join` is given; `members` names each id once, each address once, and this node
//! under the address it advertises; `cluster_id` is 1 to 64 characters of `[A-Za-z0-9_-]`
//! (it is written into certificates and the handshake).

use std::collections::HashSet;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::NodeId;

/// Longest cluster id: it goes into every node certificate and every Hello.
pub const MAX_CLUSTER_ID_LEN: usize = 64;
/// Longest peer address (`HOST:PORT`) a node may advertise: it travels in the Hello.
pub const MAX_ADDR_LEN: usize = 255;

/// The `[cluster]` section. Absent, the node runs alone exactly as before clustering.
///
/// Relative `ca`, `cert` and `key` paths are relative to the directory of the config file
/// they were read from (as plugin paths in a rules file are), or to the working directory
/// when the settings did not come from a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSettings {
    /// This node's id, unique in the cluster, at least 1. Its certificate must name it.
    pub node_id: NodeId,
    /// The peer QUIC (UDP) address this node listens on. Default `127.0.0.1:7500`.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// What peers dial to reach this node, `HOST:PORT`; host names are resolved when a peer
    /// connects. Default: `listen`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertise: Option<String>,
    /// The initial voters, `"ID@HOST:PORT"` each, this node among them. Exactly one of
    /// `members` and `join`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub members: Vec<Member>,
    /// The peer address (`HOST:PORT`) of a running member, for a node that joins a cluster
    /// already running. Exactly one of `members` and `join`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<String>,
    /// The cluster's id, written by `quiver cluster init`; a peer of another cluster is
    /// refused.
    pub cluster_id: String,
    /// The cluster CA certificate (PEM): the only root trusted for peers.
    pub ca: PathBuf,
    /// This node's certificate (PEM), signed by the cluster CA and naming this node.
    pub cert: PathBuf,
    /// This node's private key (PEM).
    pub key: PathBuf,
    /// Replicas of each durable topic (fewer when the cluster has fewer nodes). Default 3.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: u16,
    /// How often a Raft leader heartbeats its followers. Default 250ms.
    #[serde(default = "default_heartbeat", with = "crate::config::duration")]
    pub heartbeat: Duration,
    /// How long a follower waits without a heartbeat before it stands for election.
    /// Default 1s; at least twice `heartbeat`.
    #[serde(default = "default_election_timeout", with = "crate::config::duration")]
    pub election_timeout: Duration,
}

/// How a node finds its cluster, from [`ClusterSettings::bootstrap`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Bootstrap<'a> {
    /// The initial voters (this node among them).
    Members(&'a [Member]),
    /// The peer address of a running member.
    Join(&'a str),
}

/// One initial voter: `ID@HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Member {
    pub id: NodeId,
    /// `HOST:PORT`, as peers dial it.
    pub addr: String,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 7500))
}

fn default_replication_factor() -> u16 {
    3
}

fn default_heartbeat() -> Duration {
    Duration::from_millis(250)
}

fn default_election_timeout() -> Duration {
    Duration::from_secs(1)
}

impl ClusterSettings {
    /// Settings for node `node_id` of cluster `cluster_id` with the given certificate files,
    /// every other field at its default, and neither `members` nor `join` (so not yet
    /// valid for a `Config`; enough for a peer endpoint).
    pub fn new(
        node_id: NodeId,
        cluster_id: impl Into<String>,
        ca: impl Into<PathBuf>,
        cert: impl Into<PathBuf>,
        key: impl Into<PathBuf>,
    ) -> ClusterSettings {
        ClusterSettings {
            node_id,
            listen: default_listen(),
            advertise: None,
            members: Vec::new(),
            join: None,
            cluster_id: cluster_id.into(),
            ca: ca.into(),
            cert: cert.into(),
            key: key.into(),
            replication_factor: default_replication_factor(),
            heartbeat: default_heartbeat(),
            election_timeout: default_election_timeout(),
        }
    }

    /// What peers dial to reach this node: `advertise`, else `listen`.
    pub fn advertise(&self) -> String {
        match &self.advertise {
            Some(addr) => addr.clone(),
            None => self.listen.to_string(),
        }
    }

    /// The initial members or the address to join. Call after [`validate`](Self::validate),
    /// which makes sure exactly one is given; an empty `members` list otherwise.
    pub fn bootstrap(&self) -> Bootstrap<'_> {
        match &self.join {
            Some(addr) if self.members.is_empty() => Bootstrap::Join(addr),
            _ => Bootstrap::Members(&self.members),
        }
    }

    /// Makes relative `ca`, `cert` and `key` paths relative to `base` (the config file's
    /// directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        for path in [&mut self.ca, &mut self.cert, &mut self.key] {
            if path.is_relative() && !path.as_os_str().is_empty() {
                *path = base.join(&*path);
            }
        }
    }

    /// Checks every field; the error names the field (without the `cluster.` prefix) and
    /// why it is wrong.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let invalid = |field: &str, why: String| Err((field.to_owned(), why));
        if self.node_id == 0 {
            return invalid("node_id", "must be at least 1".into());
        }
        if let Err(why) = check_cluster_id(&self.cluster_id) {
            return invalid("cluster_id", why);
        }
        for (field, path) in [("ca", &self.ca), ("cert", &self.cert), ("key", &self.key)] {
            if path.as_os_str().is_empty() {
                return invalid(field, "must name a PEM file".into());
            }
        }
        if self.advertise.is_none() && self.listen.ip().is_unspecified() {
            return invalid(
                "advertise",
                format!(
                    "must be set when cluster.listen is the wildcard address {}: peers need \
                     an address to dial",
                    self.listen
                ),
            );
        }
        if let Some(addr) = &self.advertise {
            if let Err(why) = parse_host_port(addr) {
                return invalid("advertise", why);
            }
        }
        self.validate_bootstrap()?;
        if self.replication_factor == 0 {
            return invalid("replication_factor", "must be at least 1".into());
        }
        if self.heartbeat.is_zero() {
            return invalid("heartbeat", "must be more than 0".into());
        }
        if self.election_timeout < self.heartbeat * 2 {
            return invalid(
                "election_timeout",
                format!(
                    "must be at least twice cluster.heartbeat ({:?}), or followers would \
                     stand for election between two heartbeats",
                    self.heartbeat
                ),
            );
        }
        Ok(())
    }

    fn validate_bootstrap(&self) -> Result<(), (String, String)> {
        let invalid = |field: &str, why: String| Err((field.to_owned(), why));
        match (&self.join, self.members.is_empty()) {
            (Some(_), false) => {
                return invalid(
                    "members",
                    "give either cluster.members (the initial voters) or cluster.join (a \
                     running member), not both"
                        .into(),
                )
            }
            (None, true) => {
                return invalid(
                    "members",
                    "give cluster.members (the initial voters, \"ID@HOST:PORT\" each) or \
                     cluster.join (the address of a running member)"
                        .into(),
                )
            }
            (Some(addr), true) => {
                return parse_host_port(addr)
                    .map(|_| ())
                    .or_else(|why| invalid("join", why))
            }
            (None, false) => {}
        }
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        for member in &self.members {
            if !ids.insert(member.id) {
                return invalid("members", format!("node id {} appears twice", member.id));
            }
            if !addrs.insert(member.addr.as_str()) {
                return invalid("members", format!("address {} appears twice", member.addr));
            }
        }
        let Some(me) = self.members.iter().find(|m| m.id == self.node_id) else {
            return invalid(
                "members",
                format!(
                    "must include this node (cluster.node_id = {}); it lists {}",
                    self.node_id,
                    list(&self.members)
                ),
            );
        };
        let advertise = self.advertise();
        if me.addr != advertise && self.listen.port() != 0 {
            return invalid(
                "members",
                format!(
                    "this node's entry {me} does not match the address it advertises \
                     ({advertise}, from cluster.advertise or cluster.listen)"
                ),
            );
        }
        Ok(())
    }
}

fn list(members: &[Member]) -> String {
    members
        .iter()
        .map(Member::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Checks a cluster id: 1 to [`MAX_CLUSTER_ID_LEN`] characters of `[A-Za-z0-9_-]`.
pub fn check_cluster_id(id: &str) -> Result<(), String> {
    if id.is_empty() || id.len() > MAX_CLUSTER_ID_LEN {
        return Err(format!(
            "must be 1 to {MAX_CLUSTER_ID_LEN} characters (it is {})",
            id.len()
        ));
    }
    if let Some(c) = id
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "{id:?} holds {c:?}; use letters, digits, '-' and '_'"
        ));
    }
    Ok(())
}

/// Parses `HOST:PORT` (an IPv6 host in brackets: `[::1]:7500`) into host and port. The
/// host is checked for shape only: names are resolved when a peer connects.
pub fn parse_host_port(text: &str) -> Result<(&str, u16), String> {
    if text.len() > MAX_ADDR_LEN {
        return Err(format!("{text:?} is longer than {MAX_ADDR_LEN} characters"));
    }
    let (host, port) = text
        .rsplit_once(':')
        .ok_or_else(|| format!("{text:?} is not HOST:PORT"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("{text:?} has no valid port (1 to 65535)"))?;
    if port == 0 {
        return Err(format!("{text:?} has port 0, which no peer can dial"));
    }
    let bare = match host.strip_prefix('[') {
        Some(inner) => {
            let inner = inner
                .strip_suffix(']')
                .ok_or_else(|| format!("{text:?} opens a '[' it does not close"))?;
            inner
                .parse::<std::net::Ipv6Addr>()
                .map_err(|_| format!("{text:?}: {inner:?} is not an IPv6 address"))?;
            inner
        }
        None if host.contains(':') => {
            return Err(format!(
                "{text:?}: write an IPv6 host in brackets, like [::1]:7500"
            ))
        }
        None => host,
    };
    let valid_name = |c: char| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == ':';
    if bare.is_empty() || !bare.chars().all(valid_name) {
        return Err(format!("{text:?} has no valid host"));
    }
    Ok((host, port))
}

impl Member {
    /// Parses `ID@HOST:PORT`.
    pub fn parse(text: &str) -> Result<Member, String> {
        let (id, addr) = text
            .split_once('@')
            .ok_or_else(|| format!("{text:?} is not ID@HOST:PORT"))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| format!("{text:?}: {id:?} is not a node id"))?;
        if id == 0 {
            return Err(format!("{text:?}: node ids start at 1"));
        }
        let addr = addr.trim();
        parse_host_port(addr).map_err(|why| format!("{text:?}: {why}"))?;
        Ok(Member {
            id,
            addr: addr.to_owned(),
        })
    }
}

impl FromStr for Member {
    type Err = String;

    fn from_str(text: &str) -> Result<Member, String> {
        Member::parse(text)
    }
}

impl TryFrom<String> for Member {
    type Error = String;

    fn try_from(text: String) -> Result<Member, String> {
        Member::parse(&text)
    }
}

impl From<Member> for String {
    fn from(member: Member) -> String {
        member.to_string()
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.id, self.addr)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const BASE: &str = "node_id = 2\ncluster_id = \"c0ffee\"\nca = \"ca.pem\"\n\
                        cert = \"node-2.pem\"\nkey = \"node-2.key\"\n";

    fn parse(extra: &str) -> Result<ClusterSettings, toml::de::Error> {
        toml::from_str(&format!("{BASE}{extra}"))
    }

    fn field_of(settings: &ClusterSettings) -> String {
        settings.validate().unwrap_err().0
    }

    fn members(list: &[&str]) -> String {
        let quoted: Vec<String> = list.iter().map(|m| format!("{m:?}")).collect();
        format!("members = [{}]\n", quoted.join(", "))
    }

    #[test]
    fn a_full_section_parses_with_defaults_for_the_rest() {
        let s = parse(&format!(
            "listen = \"127.0.0.1:7501\"\n{}",
            members(&["1@127.0.0.1:7500", "2@127.0.0.1:7501", "3@host-c:7502"])
        ))
        .unwrap();
        s.validate().unwrap();
        assert_eq!(s.node_id, 2);
        assert_eq!(s.advertise(), "127.0.0.1:7501");
        assert_eq!(s.replication_factor, 3);
        assert_eq!(s.heartbeat, Duration::from_millis(250));
        assert_eq!(s.election_timeout, Duration::from_secs(1));
        assert_eq!(s.members[2].addr, "host-c:7502");
        match s.bootstrap() {
            Bootstrap::Members(m) => assert_eq!(m.len(), 3),
            other => panic!("{other:?}"),
        }
        let s = parse("listen = \"0.0.0.0:7600\"\nadvertise = \"b.example:7600\"\njoin = \"a.example:7500\"\nheartbeat = \"100ms\"\nelection_timeout = \"500ms\"\n").unwrap();
        s.validate().unwrap();
        assert_eq!(s.bootstrap(), Bootstrap::Join("a.example:7500"));
        assert_eq!(s.advertise(), "b.example:7600");
        assert_eq!(s.election_timeout, Duration::from_millis(500));
    }

    #[test]
    fn the_default_listen_address_is_loopback_7500() {
        let s = parse("join = \"127.0.0.1:7500\"\n").unwrap();
        assert_eq!(s.listen, "127.0.0.1:7500".parse().unwrap());
    }

    #[test]
    fn members_must_include_this_node_once() {
        let s = parse(&members(&["1@127.0.0.1:7500", "3@127.0.0.1:7502"])).unwrap();
        let (field, why) = s.validate().unwrap_err();
        assert_eq!(field, "members");
        assert!(why.contains("must include this node"), "{why}");
        let s = parse(&format!(
            "listen = \"127.0.0.1:7501\"\n{}",
            members(&["2@127.0.0.1:7501", "2@127.0.0.1:7502"])
        ))
        .unwrap();
        let (field, why) = s.validate().unwrap_err();
        assert_eq!(field, "members");
        assert!(why.contains("node id 2 appears twice"), "{why}");
        let s = parse(&format!(
            "listen = \"127.0.0.1:7501\"\n{}",
            members(&["2@127.0.0.1:7501", "3@127.0.0.1:7501"])
        ))
        .unwrap();
        assert!(s.validate().unwrap_err().1.contains("appears twice"));
    }

    #[test]
    fn this_nodes_member_entry_must_be_what_it_advertises() {
        let s = parse(&members(&["2@127.0.0.1:7600", "1@127.0.0.1:7500"])).unwrap();
        let (field, why) = s.validate().unwrap_err();
        assert_eq!(field, "members");
        assert!(why.contains("does not match"), "{why}");
    }

    #[test]
    fn members_and_join_are_exclusive_and_one_is_required() {
        let s = parse(&format!(
            "listen = \"127.0.0.1:7501\"\njoin = \"127.0.0.1:7500\"\n{}",
            members(&["2@127.0.0.1:7501"])
        ))
        .unwrap();
        let (field, why) = s.validate().unwrap_err();
        assert_eq!(field, "members");
        assert!(why.contains("not both"), "{why}");
        let (field, why) = parse("").unwrap().validate().unwrap_err();
        assert_eq!(field, "members");
        assert!(why.contains("cluster.join"), "{why}");
        assert_eq!(field_of(&parse("join = \"nowhere\"\n").unwrap()), "join");
    }

    #[test]
    fn every_field_is_checked_by_name() {
        let valid = parse("join = \"127.0.0.1:7500\"\n").unwrap();
        valid.validate().unwrap();
        type Change = Box<dyn Fn(&mut ClusterSettings)>;
        let cases: Vec<(&str, Change)> = vec![
            ("node_id", Box::new(|s| s.node_id = 0)),
            ("cluster_id", Box::new(|s| s.cluster_id = String::new())),
            ("cluster_id", Box::new(|s| s.cluster_id = "a b".into())),
            ("cluster_id", Box::new(|s| s.cluster_id = "x".repeat(65))),
            ("cert", Box::new(|s| s.cert = PathBuf::new())),
            (
                "advertise",
                Box::new(|s| s.listen = "0.0.0.0:7500".parse().unwrap()),
            ),
            ("advertise", Box::new(|s| s.advertise = Some("h:0".into()))),
            ("replication_factor", Box::new(|s| s.replication_factor = 0)),
            ("heartbeat", Box::new(|s| s.heartbeat = Duration::ZERO)),
            (
                "election_timeout",
                Box::new(|s| s.election_timeout = Duration::from_millis(400)),
            ),
        ];
        for (field, change) in cases {
            let mut s = valid.clone();
            change(&mut s);
            assert_eq!(field_of(&s), field, "{s:?}");
        }
    }

    #[test]
    fn unknown_fields_and_bad_members_fail_to_parse() {
        let err = parse("join = \"h:1\"\nnode = 3\n").unwrap_err().to_string();
        assert!(err.contains("unknown field"), "{err}");
        let err = parse(&members(&["2-127.0.0.1:7500"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("ID@HOST:PORT"), "{err}");
        let err = parse("join = \"h:1\"\nheartbeat = \"1\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("no unit"), "{err}");
        assert!(toml::from_str::<ClusterSettings>("node_id = 1\n").is_err());
    }

    #[test]
    fn member_strings_parse_and_print_back() {
        for text in ["1@127.0.0.1:7500", "12@node-b.example:9", "3@[::1]:7500"] {
            let member = Member::parse(text).unwrap();
            assert_eq!(member.to_string(), text);
        }
        assert_eq!(Member::parse("7@h:1").unwrap().id, 7);
        for bad in [
            "",
            "1",
            "x@h:1",
            "0@h:1",
            "1@h",
            "1@h:0",
            "1@h:70000",
            "1@:7500",
            "1@::1:7500",
            "1@[::1:7500",
            "1@[nope]:7500",
            "1@a b:7500",
        ] {
            assert!(Member::parse(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn relative_paths_resolve_against_the_base_and_absolute_ones_stay() {
        let mut s = parse("join = \"h:1\"\n").unwrap();
        s.key = PathBuf::from("/etc/quiver/node-2.key");
        s.resolve_paths(Path::new("/srv/cluster"));
        assert_eq!(s.ca, Path::new("/srv/cluster/ca.pem"));
        assert_eq!(s.cert, Path::new("/srv/cluster/node-2.pem"));
        assert_eq!(s.key, Path::new("/etc/quiver/node-2.key"));
    }
}
