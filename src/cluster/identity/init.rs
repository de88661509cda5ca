//! `quiver cluster init`: a development cluster in one directory. It writes the CA
//! (`ca.pem`, `ca.key`), for each node `node-<id>.pem`, `node-<id>.key` and a ready config
//! file `node-<id>.toml`, and `cluster.toml`, which records the cluster id and the port
//! layout so that `--add-node` can sign one more node later.
//!
//! # Port layout
//! Node `i` listens for peers on `base_port + i - 1`, and for clients on four ports from
//! `client_base_port + 10 * (i - 1)`: QUIC, HTTP, NSQ TCP and nsqd HTTP, in that order. So
//! the defaults give node 1 the ports 7400 to 7403 and 7500, node 2 7410 to 7413 and 7501.

use std::collections::BTreeSet;
use std::fs;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{random_hex, ClusterCa, IdentityError, NodeName};
use crate::cluster::NodeId;
use crate::transport::tls::{self, TlsError};

/// The CA certificate's file name in a cluster directory.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name in a cluster directory.
pub const CA_KEY: &str = "ca.key";
/// The file recording the cluster id and the port layout.
pub const MANIFEST: &str = "cluster.toml";

/// What `quiver cluster init --nodes N` makes.
#[derive(Debug, Clone)]
pub struct InitOptions {
    pub dir: PathBuf,
    pub nodes: u16,
    /// What peers and clients dial: an IP address or a host name.
    pub host: String,
    pub base_port: u16,
    pub client_base_port: u16,
    /// Replace an existing CA (and every file init writes).
    pub force: bool,
}

impl InitOptions {
    pub fn new(dir: impl Into<PathBuf>, nodes: u16) -> InitOptions {
        InitOptions {
            dir: dir.into(),
            nodes,
            host: "127.0.0.1".into(),
            base_port: 7500,
            client_base_port: 7400,
            force: false,
        }
    }
}

/// What init wrote.
#[derive(Debug, Clone)]
pub struct Written {
    pub cluster_id: String,
    /// Every file written, in order.
    pub files: Vec<PathBuf>,
    /// Each new node's id and config file.
    pub nodes: Vec<(NodeId, PathBuf)>,
    /// Whether the nodes listen on a non-loopback address, where `quiver serve` requires
    /// authentication to be configured.
    pub exposed: bool,
}

/// `cluster.toml`: the cluster id and the port layout, for `--add-node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Manifest {
    cluster_id: String,
    host: String,
    base_port: u16,
    client_base_port: u16,
    /// The initial voters, made by init.
    members: Vec<NodeId>,
    /// Every node with a certificate: the members, then the nodes added since.
    nodes: Vec<NodeId>,
}

/// The ports of one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Ports {
    peer: u16,
    quic: u16,
    http: u16,
    nsq_tcp: u16,
    nsq_http: u16,
}

/// Makes a new cluster in `options.dir`: a CA, a random cluster id, and nodes 1 to
/// `options.nodes`. Refuses to replace an existing CA or any other file unless `force`.
pub fn init_cluster(options: &InitOptions) -> Result<Written, IdentityError> {
    if options.nodes == 0 {
        return Err(IdentityError::Layout("--nodes must be at least 1".into()));
    }
    let nodes: Vec<NodeId> = (1..=NodeId::from(options.nodes)).collect();
    let manifest = Manifest {
        cluster_id: random_hex(16)?,
        host: options.host.clone(),
        base_port: options.base_port,
        client_base_port: options.client_base_port,
        members: nodes.clone(),
        nodes: nodes.clone(),
    };
    check_host(&manifest.host)?;
    check_layout(&manifest)?;
    let dir = make_dir(&options.dir)?;
    let ca_path = dir.join(CA_CERT);
    if !options.force {
        for path in [dir.join(CA_CERT), dir.join(CA_KEY)] {
            if exists(&path)? {
                return Err(IdentityError::Exists {
                    path,
                    hint: "; this directory already holds a cluster CA: pass --force to \
                           replace it (certificates it signed stop being trusted), or \
                           --add-node ID to add a node to its cluster",
                });
            }
        }
        for node in &nodes {
            for path in node_files(&dir, *node) {
                refuse_existing(&path)?;
            }
        }
        refuse_existing(&dir.join(MANIFEST))?;
    }
    let ca = ClusterCa::generate(&manifest.cluster_id)?;
    let mut written = Written {
        cluster_id: manifest.cluster_id.clone(),
        files: Vec::new(),
        nodes: Vec::new(),
        exposed: !is_loopback(&manifest.host),
    };
    write(&ca_path, ca.cert_pem(), 0o644, options.force, &mut written)?;
    write(
        &dir.join(CA_KEY),
        &ca.key_pem(),
        0o600,
        options.force,
        &mut written,
    )?;
    for node in &nodes {
        write_node(&dir, &ca, &manifest, *node, options.force, &mut written)?;
    }
    write(
        &dir.join(MANIFEST),
        &manifest_text(&manifest),
        0o644,
        options.force,
        &mut written,
    )?;
    Ok(written)
}

/// Signs a certificate and writes a config for node `node` of the cluster in `dir`, with
/// the existing CA. The new node joins through the first node of the manifest.
pub fn add_node(dir: &Path, node: NodeId) -> Result<Written, IdentityError> {
    let dir = make_dir(dir)?;
    let manifest_path = dir.join(MANIFEST);
    let text = fs::read_to_string(&manifest_path).map_err(|source| TlsError::Read {
        path: manifest_path.clone(),
        source,
    })?;
    let mut manifest: Manifest = toml::from_str(&text).map_err(|e| IdentityError::Invalid {
        path: manifest_path.clone(),
        why: e.to_string(),
    })?;
    if node == 0 {
        return Err(IdentityError::Layout("node ids start at 1".into()));
    }
    if manifest.nodes.contains(&node) {
        return Err(IdentityError::Layout(format!(
            "node {node} is already a node of cluster {} (see {})",
            manifest.cluster_id,
            manifest_path.display()
        )));
    }
    manifest.nodes.push(node);
    check_layout(&manifest)?;
    for path in node_files(&dir, node) {
        refuse_existing(&path)?;
    }
    let ca = ClusterCa::load(&manifest.cluster_id, &dir.join(CA_CERT), &dir.join(CA_KEY))?;
    let mut written = Written {
        cluster_id: manifest.cluster_id.clone(),
        files: Vec::new(),
        nodes: Vec::new(),
        exposed: !is_loopback(&manifest.host),
    };
    write_node(&dir, &ca, &manifest, node, false, &mut written)?;
    write(
        &manifest_path,
        &manifest_text(&manifest),
        0o644,
        true,
        &mut written,
    )?;
    Ok(written)
}

/// A node's certificate, key and config file paths.
fn node_files(dir: &Path, node: NodeId) -> [PathBuf; 3] {
    [
        dir.join(format!("node-{node}.pem")),
        dir.join(format!("node-{node}.key")),
        dir.join(format!("node-{node}.toml")),
    ]
}

fn write_node(
    dir: &Path,
    ca: &ClusterCa,
    manifest: &Manifest,
    node: NodeId,
    force: bool,
    written: &mut Written,
) -> Result<(), IdentityError> {
    let pem = ca.issue(&NodeName::new(&manifest.cluster_id, node), &manifest.host)?;
    let [cert, key, config] = node_files(dir, node);
    write(&cert, &pem.cert_pem, 0o644, force, written)?;
    write(&key, &pem.key_pem, 0o600, force, written)?;
    let text = config_text(dir, manifest, node);
    write(&config, &text, 0o644, force, written)?;
    written.nodes.push((node, config));
    Ok(())
}

/// A node's config file: its data directory, client listeners and `[cluster]` section.
/// A member (made by init) lists all members; a node added later joins through the first.
fn config_text(dir: &Path, manifest: &Manifest, node: NodeId) -> String {
    let ports = ports(manifest, node);
    let host = &manifest.host;
    let bind = bind_ip(host);
    let peer = |port: u16| join_host_port(host, port);
    let mut out = format!(
        "# Node {node} of Quiver cluster {id}, written by `quiver cluster init`.\n\
         # Start it with: quiver serve --config {config}\n\n\
         data_dir = {data}\n\n\
         [listen]\nquic = \"{quic}\"\nhttp = \"{http}\"\n\n\
         [nsq]\ntcp = \"{nsq_tcp}\"\nhttp = \"{nsq_http}\"\n\n\
         [cluster]\nnode_id = {node}\ncluster_id = \"{id}\"\nlisten = \"{listen}\"\n",
        id = manifest.cluster_id,
        config = dir.join(format!("node-{node}.toml")).display(),
        data = toml_string(
            &dir.join(format!("node-{node}"))
                .join("data")
                .to_string_lossy()
        ),
        quic = join_host_port(&bind, ports.quic),
        http = join_host_port(&bind, ports.http),
        nsq_tcp = join_host_port(&bind, ports.nsq_tcp),
        nsq_http = join_host_port(&bind, ports.nsq_http),
        listen = join_host_port(&bind, ports.peer),
    );
    if bind != *host {
        out.push_str(&format!("advertise = {}\n", toml_string(&peer(ports.peer))));
    }
    let founders = &manifest.members;
    if founders.contains(&node) {
        let members: Vec<String> = founders
            .iter()
            .map(|id| toml_string(&format!("{id}@{}", peer(ports_of(manifest, *id)))))
            .collect();
        out.push_str(&format!("members = [{}]\n", members.join(", ")));
    } else {
        let first = founders.first().copied().unwrap_or(node);
        out.push_str(&format!(
            "join = {}\n",
            toml_string(&peer(ports_of(manifest, first)))
        ));
    }
    let path = |file: &str| toml_string(&dir.join(file).to_string_lossy());
    let (cert, key) = (format!("node-{node}.pem"), format!("node-{node}.key"));
    out.push_str(&format!(
        "ca = {}\ncert = {}\nkey = {}\n",
        path(CA_CERT),
        path(&cert),
        path(&key)
    ));
    // Clients get the same certificate, so that one CA file (`--ca`) trusts every node a
    // redirect may send them to.
    out.push_str(&format!(
        "\n[tls]\ncert = {}\nkey = {}\n",
        path(&cert),
        path(&key)
    ));
    out
}

fn ports_of(manifest: &Manifest, node: NodeId) -> u16 {
    ports(manifest, node).peer
}

/// Node `node`'s ports; [`check_layout`] has made sure they fit in a u16.
fn ports(manifest: &Manifest, node: NodeId) -> Ports {
    let index = node.saturating_sub(1);
    let at = |base: u16, offset: u64| u16::try_from(u64::from(base) + offset).unwrap_or(0);
    let client = index * 10;
    Ports {
        peer: at(manifest.base_port, index),
        quic: at(manifest.client_base_port, client),
        http: at(manifest.client_base_port, client + 1),
        nsq_tcp: at(manifest.client_base_port, client + 2),
        nsq_http: at(manifest.client_base_port, client + 3),
    }
}

/// Every node's ports are below 65536 and no two ports of the cluster are the same.
fn check_layout(manifest: &Manifest) -> Result<(), IdentityError> {
    let mut seen = BTreeSet::new();
    for node in &manifest.nodes {
        let index = node.saturating_sub(1);
        let top = [
            u64::from(manifest.base_port) + index,
            u64::from(manifest.client_base_port) + index * 10 + 3,
        ];
        if manifest.base_port == 0
            || manifest.client_base_port == 0
            || top.iter().any(|p| *p > 65535)
        {
            return Err(IdentityError::Layout(format!(
                "node {node}'s ports do not fit between 1 and 65535 with --base-port {} and \
                 --client-base-port {}",
                manifest.base_port, manifest.client_base_port
            )));
        }
        let p = ports(manifest, *node);
        for port in [p.peer, p.quic, p.http, p.nsq_tcp, p.nsq_http] {
            if !seen.insert(port) {
                return Err(IdentityError::Layout(format!(
                    "port {port} would be used twice: the peer ports (--base-port {}, one per \
                     node) overlap the client ports (--client-base-port {}, ten per node)",
                    manifest.base_port, manifest.client_base_port
                )));
            }
        }
    }
    Ok(())
}

fn check_host(host: &str) -> Result<(), IdentityError> {
    crate::cluster::settings::parse_host_port(&format!("{}:1", bracket(host)))
        .map(|_| ())
        .map_err(|why| IdentityError::Layout(format!("--host {host:?}: {why}")))
}

/// The address to listen on: the host itself when it is an IP, else every interface.
fn bind_ip(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(_) => host.to_owned(),
        Err(_) => "0.0.0.0".to_owned(),
    }
}

fn is_loopback(host: &str) -> bool {
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host == "localhost",
    }
}

fn bracket(host: &str) -> String {
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V6(_)) => format!("[{host}]"),
        _ => host.to_owned(),
    }
}

fn join_host_port(host: &str, port: u16) -> String {
    format!("{}:{port}", bracket(host))
}

/// A TOML basic string.
fn toml_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn manifest_text(manifest: &Manifest) -> String {
    let ids = |ids: &[NodeId]| {
        ids.iter()
            .map(NodeId::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "# Written by `quiver cluster init`; read by `quiver cluster init --add-node`.\n\
         cluster_id = \"{}\"\nhost = {}\nbase_port = {}\nclient_base_port = {}\n\
         members = [{}]\nnodes = [{}]\n",
        manifest.cluster_id,
        toml_string(&manifest.host),
        manifest.base_port,
        manifest.client_base_port,
        ids(&manifest.members),
        ids(&manifest.nodes)
    )
}

/// Creates `dir` and returns it absolute, so that the config files name it from anywhere.
fn make_dir(dir: &Path) -> Result<PathBuf, IdentityError> {
    fs::create_dir_all(dir)
        .and_then(|()| fs::canonicalize(dir))
        .map_err(|source| {
            IdentityError::Tls(TlsError::Write {
                path: dir.to_owned(),
                source,
            })
        })
}

fn exists(path: &Path) -> Result<bool, IdentityError> {
    path.try_exists().map_err(|source| {
        IdentityError::Tls(TlsError::Read {
            path: path.to_owned(),
            source,
        })
    })
}

fn refuse_existing(path: &Path) -> Result<(), IdentityError> {
    if exists(path)? {
        return Err(IdentityError::Exists {
            path: path.to_owned(),
            hint: " (pass --force to replace the whole cluster)",
        });
    }
    Ok(())
}

/// Writes a new file with `mode`; with `replace`, an existing one is removed first.
fn write(
    path: &Path,
    contents: &str,
    mode: u32,
    replace: bool,
    written: &mut Written,
) -> Result<(), IdentityError> {
    if replace && exists(path)? {
        fs::remove_file(path).map_err(|source| TlsError::Write {
            path: path.to_owned(),
            source,
        })?;
    }
    tls::write_new(path, contents, mode)?;
    written.files.push(path.to_owned());
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::cluster::identity::load_identity;
    use crate::cluster::settings::Bootstrap;
    use crate::config::Config;

    #[test]
    fn init_writes_a_ca_and_a_valid_config_per_node() {
        let dir = tempfile::tempdir().unwrap();
        let written = init_cluster(&InitOptions::new(dir.path(), 3)).unwrap();
        assert_eq!(written.cluster_id.len(), 32);
        assert_eq!(written.nodes.len(), 3);
        assert!(!written.exposed);
        let mut peers = BTreeSet::new();
        for (id, path) in &written.nodes {
            let config = Config::from_file(path).unwrap();
            config.validate().unwrap();
            let cluster = config.cluster.clone().unwrap();
            assert_eq!(cluster.node_id, *id);
            assert_eq!(cluster.cluster_id, written.cluster_id);
            assert!(matches!(cluster.bootstrap(), Bootstrap::Members(m) if m.len() == 3));
            peers.insert(cluster.listen);
            load_identity(&cluster).unwrap();
            assert!(config.data_dir.ends_with(format!("node-{id}/data")));
        }
        assert_eq!(peers.len(), 3);
        #[cfg(unix)]
        for key in ["ca.key", "node-1.key"] {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(dir.path().join(key))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{key}");
        }
    }

    #[test]
    fn init_refuses_to_replace_a_ca_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = InitOptions::new(dir.path(), 1);
        let first = init_cluster(&options).unwrap();
        let err = init_cluster(&options).unwrap_err().to_string();
        assert!(err.contains("ca.pem") && err.contains("--force"), "{err}");
        options.force = true;
        let second = init_cluster(&options).unwrap();
        assert_ne!(first.cluster_id, second.cluster_id);
    }

    #[test]
    fn an_added_node_joins_with_a_certificate_of_the_same_ca() {
        let dir = tempfile::tempdir().unwrap();
        let first = init_cluster(&InitOptions::new(dir.path(), 3)).unwrap();
        let added = add_node(dir.path(), 4).unwrap();
        assert_eq!(added.cluster_id, first.cluster_id);
        let config = Config::from_file(&added.nodes[0].1).unwrap();
        config.validate().unwrap();
        let cluster = config.cluster.unwrap();
        assert_eq!(cluster.bootstrap(), Bootstrap::Join("127.0.0.1:7500"));
        assert_eq!(cluster.listen.port(), 7503);
        assert_eq!(config.listen.quic.port(), 7430);
        load_identity(&cluster).unwrap();
        let err = add_node(dir.path(), 4).unwrap_err().to_string();
        assert!(err.contains("already"), "{err}");
    }

    #[test]
    fn layouts_whose_ports_clash_or_overflow_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = InitOptions::new(dir.path(), 3);
        options.base_port = 7410;
        let err = init_cluster(&options).unwrap_err().to_string();
        assert!(err.contains("used twice"), "{err}");
        options.base_port = 65534;
        let err = init_cluster(&options).unwrap_err().to_string();
        assert!(err.contains("do not fit"), "{err}");
        assert!(!dir.path().join("ca.pem").exists());
    }

    #[test]
    fn a_host_name_is_advertised_and_every_interface_is_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut options = InitOptions::new(dir.path(), 2);
        options.host = "node.example".into();
        let written = init_cluster(&options).unwrap();
        assert!(written.exposed);
        let text = fs::read_to_string(&written.nodes[1].1).unwrap();
        assert!(text.contains("listen = \"0.0.0.0:7501\""), "{text}");
        assert!(text.contains("advertise = \"node.example:7501\""), "{text}");
        let config: Config = toml::from_str(&text).unwrap();
        config.cluster.unwrap().validate().unwrap();
    }

    #[test]
    fn toml_strings_escape_quotes_and_backslashes() {
        let text = "a \"b\" \\c\u{1}";
        let parsed: toml::Table = toml::from_str(&format!("x = {}", toml_string(text))).unwrap();
        assert_eq!(parsed["x"].as_str(), Some(text));
    }
}
