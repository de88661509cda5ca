//! `quiver cluster`: make a development cluster's CA, node certificates and configs.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{ArgGroup, Args, Subcommand};

use quiver::cluster::identity::init::{self, InitOptions, Written};
use quiver::cluster::NodeId;

#[derive(Debug, Subcommand)]
pub(super) enum ClusterCommand {
    /// Write a development cluster into a directory: a cluster CA, a certificate and key
    /// per node signed by it, and a ready config file per node (`node-<id>.toml`). With
    /// --add-node, sign one more node with the directory's existing CA.
    #[command(group(ArgGroup::new("what").required(true).args(["nodes", "add_node"])))]
    Init(InitArgs),
    /// Show a node's view of the cluster: its state, the meta group's leader and term, the
    /// members with their lag (as the leader sees it), and where topics are placed.
    Status(StatusArgs),
    /// Make a running node a voting member. A node started with `join` in its `[cluster]`
    /// section asks for this itself; this is for adding one by hand.
    AddNode(AddNodeArgs),
    /// Remove a member: its replicas move to the other members first (each topic it led
    /// gets a new leader), then it leaves the cluster. Stop the node after.
    RemoveNode(RemoveNodeArgs),
}

/// How to reach a node's HTTP admin API.
#[derive(Debug, Args)]
pub(super) struct AdminAddr {
    /// The node's HTTP admin address.
    #[arg(long, default_value = "127.0.0.1:7401")]
    http: String,
    /// Give up connecting after this long.
    #[arg(long, default_value = "5s", value_parser = quiver::config::parse_duration)]
    connect_timeout: std::time::Duration,
}

#[derive(Debug, Args)]
pub(super) struct AddNodeArgs {
    /// The new member's node id.
    id: NodeId,
    /// Where the other nodes reach it (its `[cluster]` `advertise` or `listen`), HOST:PORT.
    peer_addr: String,
    #[command(flatten)]
    admin: AdminAddr,
}

#[derive(Debug, Args)]
pub(super) struct RemoveNodeArgs {
    /// The member's node id.
    id: NodeId,
    #[command(flatten)]
    admin: AdminAddr,
}

#[derive(Debug, Args)]
pub(super) struct StatusArgs {
    /// Print the status as JSON, as `GET /cluster/status` gives it.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    admin: AdminAddr,
}

#[derive(Debug, Args)]
pub(super) struct InitArgs {
    /// The directory to write (made if missing).
    #[arg(long)]
    dir: PathBuf,
    /// How many nodes (ids 1 to N, the initial voters).
    #[arg(long)]
    nodes: Option<u16>,
    /// Add node ID to the cluster already in --dir (it joins through node 1).
    #[arg(long, value_name = "ID", conflicts_with_all = ["host", "base_port", "client_base_port", "force"])]
    add_node: Option<NodeId>,
    /// The address peers and clients dial: an IP address or a host name
    /// [default: 127.0.0.1].
    #[arg(long)]
    host: Option<String>,
    /// Peer port of node 1; node i uses base + i - 1 [default: 7500].
    #[arg(long, value_name = "P")]
    base_port: Option<u16>,
    /// First client port of node 1; node i uses Q + 10(i-1) to Q + 10(i-1) + 3 for QUIC,
    /// HTTP, NSQ TCP and nsqd HTTP [default: 7400].
    #[arg(long, value_name = "Q")]
    client_base_port: Option<u16>,
    /// Replace an existing CA and every file init writes. Certificates signed by the old CA
    /// stop being trusted.
    #[arg(long)]
    force: bool,
}

pub(super) fn run(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Init(args) => init(args),
        ClusterCommand::Status(args) => status(args),
        ClusterCommand::AddNode(args) => {
            let path = format!(
                "/cluster/nodes/add?id={}&peer_addr={}",
                args.id, args.peer_addr
            );
            let json = admin_request(&args.admin, "POST", &path, MEMBERS_WITHIN)?;
            println!("node {} is a member, at {}", json["node"], args.peer_addr);
            Ok(())
        }
        ClusterCommand::RemoveNode(args) => {
            let path = format!("/cluster/nodes/remove?id={}", args.id);
            println!("removing node {}: moving its replicas first", args.id);
            let json = admin_request(&args.admin, "POST", &path, REMOVE_WITHIN)?;
            let moved = json["moved"].as_array().map_or(0, Vec::len);
            println!(
                "node {} removed after {} ms; {moved} topics moved to other members: stop it now",
                json["node"], json["took_ms"]
            );
            Ok(())
        }
    }
}

/// How long `add-node` waits for the answer (the new member catches up first).
const MEMBERS_WITHIN: std::time::Duration = std::time::Duration::from_secs(90);
/// How long `remove-node` waits for the answer (every replica moves first).
const REMOVE_WITHIN: std::time::Duration = std::time::Duration::from_secs(330);

/// One request to a node's HTTP admin API over plain HTTP/1.1; its JSON answer, or the
/// node's reason for refusing.
fn admin_request(
    admin: &AdminAddr,
    method: &str,
    path: &str,
    wait: std::time::Duration,
) -> Result<serde_json::Value> {
    use std::io::{Read, Write};
    use std::net::ToSocketAddrs;
    let addr = admin
        .http
        .to_socket_addrs()
        .with_context(|| format!("resolving {}", admin.http))?
        .next()
        .with_context(|| format!("{} names no address", admin.http))?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, admin.connect_timeout)
        .with_context(|| {
            format!(
                "nothing answers at {} (the node's HTTP address)",
                admin.http
            )
        })?;
    stream.set_read_timeout(Some(wait))?;
    let token = std::env::var("QUIVER_TOKEN").ok();
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n",
        admin.http
    )?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .with_context(|| format!("no answer from {} within {wait:?}", admin.http))?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let code = head.split_whitespace().nth(1).unwrap_or("");
    let json: serde_json::Value = serde_json::from_str(body)
        .with_context(|| format!("the node answered {code} without JSON"))?;
    if code != "200" {
        let reason = json["error"].as_str().unwrap_or(body);
        anyhow::bail!("the node refused: {reason}");
    }
    Ok(json)
}

/// `GET /cluster/status`, then a table (or the JSON).
fn status(args: StatusArgs) -> Result<()> {
    let wait = std::time::Duration::from_secs(30);
    let json = admin_request(&args.admin, "GET", "/cluster/status", wait)?;
    if args.json {
        println!("{json:#}");
        return Ok(());
    }
    let opt = |v: &serde_json::Value| v.as_u64().map_or("-".to_string(), |n| n.to_string());
    println!(
        "node {} of cluster {}: {}, meta leader {}, term {}, committed {}, applied {}, {} leader changes",
        json["node_id"],
        json["cluster_id"].as_str().unwrap_or("?"),
        json["state"].as_str().unwrap_or("?"),
        opt(&json["leader"]),
        json["term"],
        opt(&json["committed"]),
        opt(&json["applied"]),
        json["leader_changes"],
    );
    println!(
        "{:>6}  {:<24} {:>6} {:>8} {:>6} {:>8}",
        "NODE", "PEER ADDRESS", "VOTER", "MATCHED", "LAG", "ACK MS"
    );
    for m in json["members"].as_array().into_iter().flatten() {
        println!(
            "{:>6}  {:<24} {:>6} {:>8} {:>6} {:>8}",
            m["id"].to_string(),
            m["peer_addr"].as_str().unwrap_or("?"),
            if m["voter"].as_bool() == Some(true) {
                "yes"
            } else {
                "no"
            },
            opt(&m["matched"]),
            opt(&m["lag"]),
            opt(&m["last_ack_ms"]),
        );
    }
    if let Some(leaving) = json["leaving"].as_array().filter(|l| !l.is_empty()) {
        println!("being removed: {leaving:?}");
    }
    for t in json["topics"].as_array().into_iter().flatten() {
        let moving = match t["moving"].as_bool() {
            Some(true) => format!(" (moving, from {})", t["voters"]),
            _ => String::new(),
        };
        println!(
            "topic {}: replicas {}{moving}, preferred leader {}",
            t["topic"].as_str().unwrap_or("?"),
            t["replicas"],
            t["preferred_leader"]
        );
    }
    Ok(())
}

fn init(args: InitArgs) -> Result<()> {
    let written = match (args.add_node, args.nodes) {
        (Some(node), _) => init::add_node(&args.dir, node).with_context(|| {
            format!(
                "adding node {node} to the cluster in {}",
                args.dir.display()
            )
        })?,
        (None, Some(nodes)) => {
            let mut options = InitOptions::new(&args.dir, nodes);
            if let Some(host) = args.host {
                options.host = host;
            }
            if let Some(port) = args.base_port {
                options.base_port = port;
            }
            if let Some(port) = args.client_base_port {
                options.client_base_port = port;
            }
            options.force = args.force;
            init::init_cluster(&options)
                .with_context(|| format!("writing a cluster into {}", args.dir.display()))?
        }
        // clap requires one of the two.
        (None, None) => anyhow::bail!("give --nodes N or --add-node ID"),
    };
    report(&written);
    Ok(())
}

fn report(written: &Written) {
    println!("cluster {}", written.cluster_id);
    for file in &written.files {
        println!("  wrote {}", file.display());
    }
    println!();
    for (node, config) in &written.nodes {
        println!(
            "start node {node}:  quiver serve --config {}",
            config.display()
        );
    }
    if written.exposed {
        println!();
        println!(
            "note: the nodes listen on a non-loopback address; configure authentication \
             ([auth] and [[grant]] rules) in their config files, or `quiver serve` refuses \
             to start"
        );
    }
}
