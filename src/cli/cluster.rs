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
    }
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
