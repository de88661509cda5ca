//! The composition root: storage → broker → rules (plugins bound as hooks, before recovery;
//! declared channels applied after it) → listeners and the rules watch, and graceful
//! shutdown.
//!
//! Shutdown is one protocol: stop accepting connections; tell the broker, whose subscriptions
//! then send E_SHUTTING_DOWN and requeue what they had in flight; give sessions
//! `limits.shutdown_grace` to finish; close the QUIC endpoint; wait for the channel timers;
//! save every channel's state and close the store cleanly, so that the next start is fast.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::auth::Authenticator;
use crate::broker::Broker;
use crate::broker::BrokerError;
use crate::cluster::raft::meta::ClientAddrs;
use crate::cluster::raft::node::{ClusterError, ClusterNode, OnPublish};
use crate::cluster::raft::storage::ClusterStorage;
use crate::cluster::raft::topic::group::OnLost;
use crate::config::{Config, ConfigError};
use crate::plugin::{PluginError, PluginHost};
use crate::rules::{NoGrants, Reloader, RulesError};
use crate::storage::{FileStorage, Storage, StorageError};
use crate::transport::tls::{self, TlsError};

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("creating data directory {path}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("setting up TLS")]
    Tls(#[from] TlsError),
    #[error("opening the message store")]
    Storage(#[from] StorageError),
    #[error("recovering topics and channels")]
    Recover(#[from] BrokerError),
    #[error("starting the plugin host")]
    Plugins(#[from] PluginError),
    #[error("loading the rules")]
    Rules(#[from] RulesError),
    #[error("watching the rules for changes")]
    RulesWatch(#[source] std::io::Error),
    #[error("loading the cluster identity")]
    ClusterIdentity(#[from] crate::cluster::identity::IdentityError),
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    #[error("binding {what} on {addr}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// A running broker with its listeners.
#[derive(Debug)]
pub struct Server {
    broker: Broker,
    endpoint: quinn::Endpoint,
    quic_addr: SocketAddr,
    http_addr: SocketAddr,
    nsq_tcp_addr: Option<SocketAddr>,
    nsq_http_addr: Option<SocketAddr>,
    fingerprint: String,
    cert_path: PathBuf,
    tasks: TaskTracker,
    config: Config,
    /// The node's part in its cluster, with a `[cluster]` section.
    cluster: Option<Arc<ClusterNode>>,
}

impl Server {
    /// Validates `config`, loads or makes the certificate, binds both listeners and starts
    /// serving. Call inside a tokio runtime.
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        config.validate()?;
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let (identity, cert_path) = match (&config.tls.cert, &config.tls.key) {
            (Some(cert), Some(key)) => (tls::load_identity(cert, key)?, cert.clone()),
            _ => {
                let dir = config.data_dir.join("tls");
                (
                    tls::load_or_create_dev_identity(&dir)?,
                    dir.join("cert.pem"),
                )
            }
        };
        let server_config = tls::server_config(&identity, config.tls.client_ca.as_deref())?;
        let bind = |what, addr, source| ServerError::Bind { what, addr, source };
        let endpoint = quinn::Endpoint::server(server_config, config.listen.quic)
            .map_err(|e| bind("QUIC", config.listen.quic, e))?;
        let quic_addr = endpoint
            .local_addr()
            .map_err(|e| bind("QUIC", config.listen.quic, e))?;
        let http = tokio::net::TcpListener::bind(config.listen.http)
            .await
            .map_err(|e| bind("HTTP", config.listen.http, e))?;
        let http_addr = http
            .local_addr()
            .map_err(|e| bind("HTTP", config.listen.http, e))?;
        let nsq_tcp = match config.nsq.tcp {
            Some(addr) => Some(bind_tcp("NSQ TCP", addr).await?),
            None => None,
        };
        let nsq_http = match config.nsq.http {
            Some(addr) => Some(bind_tcp("NSQ HTTP", addr).await?),
            None => None,
        };

        let storage: Arc<dyn Storage> =
            Arc::new(FileStorage::open(&config.data_dir, config.storage.clone())?);
        // On a cluster node the broker's durable topics are replicated: the node starts
        // before the broker, which stores through it.
        let cluster = match &config.cluster {
            Some(settings) => {
                let identity = crate::cluster::identity::load_identity(settings)?;
                let clients = ClientAddrs {
                    quic: quic_addr.to_string(),
                    http: http_addr.to_string(),
                    nsq_tcp: nsq_tcp.as_ref().map(|(_, a)| a.to_string()),
                    nsq_http: nsq_http.as_ref().map(|(_, a)| a.to_string()),
                };
                let node = ClusterNode::start(
                    settings,
                    &identity,
                    &config.data_dir,
                    storage.clone(),
                    config.storage.clone(),
                    clients,
                )
                .await?;
                tracing::info!(node = node.id(), peer_addr = %node.peer_addr(), "cluster node started");
                Some(node)
            }
            None => None,
        };
        let storage: Arc<dyn Storage> = match &cluster {
            Some(node) => Arc::new(ClusterStorage::new(node.clone(), storage)),
            None => storage,
        };
        let broker = Broker::new(config.broker.clone(), storage);
        if let Some(node) = &cluster {
            connect_cluster(node, &broker);
        }
        if let Some(threads) = config.plugins.threads {
            broker.set_plugin_threads(threads);
        }
        let rules = match config.rules_source() {
            Some(source) => {
                let cache = config.plugins.cache_dir(&config.data_dir);
                let host = PluginHost::new(config.plugins.limits(), Some(cache))?;
                let reloader = Reloader::start(Arc::new(host), source, broker.clone()).await?;
                broker.set_hooks(reloader.rules());
                Some(reloader)
            }
            None => None,
        };
        let auth = Arc::new(Authenticator::new(
            &config.auth,
            config.tls.client_ca.is_some(),
        ));
        install_access(&config, &broker, rules.as_ref());
        broker.recover()?;
        let tasks = TaskTracker::new();
        if let Some(reloader) = &rules {
            reloader.apply().await?;
            let watch = reloader.spawn_watch().map_err(ServerError::RulesWatch)?;
            tasks.spawn(async move {
                // The watch ends when the broker shuts down; a panic in it is logged.
                if let Err(e) = watch.await {
                    tracing::error!(error = %e, "the rules watch task failed");
                }
            });
        }
        tasks.spawn(accept(
            endpoint.clone(),
            broker.clone(),
            rules.clone(),
            Arc::clone(&auth),
            config.limits.max_connections,
            tasks.clone(),
        ));
        tasks.spawn(crate::http::serve(
            http,
            broker.clone(),
            rules,
            Arc::clone(&auth),
            cluster.clone(),
        ));
        let nsq_tcp_addr = nsq_tcp.as_ref().map(|(_, addr)| *addr);
        let nsq_http_addr = nsq_http.as_ref().map(|(_, addr)| *addr);
        if let Some((listener, _)) = nsq_tcp {
            let options = crate::nsq::tcp::TcpOptions {
                config: config.nsq.clone(),
                tls: Some(tls::tcp_server_config(
                    &identity,
                    config.tls.client_ca.as_deref(),
                )?),
                max_connections: config.limits.max_connections,
                auth: Arc::clone(&auth),
            };
            tasks.spawn(crate::nsq::tcp::serve(
                listener,
                broker.clone(),
                options,
                tasks.clone(),
            ));
        }
        if let Some((listener, _)) = nsq_http {
            tasks.spawn(crate::nsq::http::serve(
                listener,
                broker.clone(),
                config.nsq.clone(),
                nsq_tcp_addr,
                Arc::clone(&auth),
            ));
        }
        tracing::info!(%quic_addr, %http_addr, fingerprint = %identity.fingerprint, "quiver is serving");
        Ok(Server {
            broker,
            endpoint,
            quic_addr,
            http_addr,
            nsq_tcp_addr,
            nsq_http_addr,
            fingerprint: identity.fingerprint,
            cert_path,
            tasks,
            config,
            cluster,
        })
    }

    pub fn broker(&self) -> &Broker {
        &self.broker
    }

    pub fn quic_addr(&self) -> SocketAddr {
        self.quic_addr
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// The NSQ TCP listener's address, when it is on.
    pub fn nsq_tcp_addr(&self) -> Option<SocketAddr> {
        self.nsq_tcp_addr
    }

    /// The nsqd HTTP API's address, when it is on.
    pub fn nsq_http_addr(&self) -> Option<SocketAddr> {
        self.nsq_http_addr
    }

    /// SHA-256 fingerprint of the certificate the broker presents.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The PEM file clients can trust as a CA to reach this broker.
    pub fn cert_path(&self) -> &std::path::Path {
        &self.cert_path
    }

    /// Graceful shutdown; see the module docs.
    pub async fn shutdown(self) {
        tracing::info!("shutting down");
        self.broker.shutdown();
        self.tasks.close();
        let grace = self.config.limits.shutdown_grace;
        if tokio::time::timeout(grace, self.tasks.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                ?grace,
                "sessions still open after the grace period; closing them"
            );
        }
        self.endpoint
            .close(crate::session::CLOSE_SHUTDOWN.into(), b"shutting down");
        let _ = tokio::time::timeout(grace, self.endpoint.wait_idle()).await;
        self.broker.wait_stopped().await;
        if let Some(cluster) = &self.cluster {
            cluster.shutdown().await;
        }
        let broker = self.broker.clone();
        match tokio::task::spawn_blocking(move || broker.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::error!(error = %e, "closing the message store failed; the next start will recover")
            }
            Err(e) => tracing::error!(error = %e, "closing the message store panicked"),
        }
        crate::log_limit::flush();
        tracing::info!("stopped");
    }
}

/// Connects a cluster node and its broker: a topic this node stops leading is let go; the
/// publishes NSQ and HTTP clients send here for a topic another node leads are forwarded
/// to it; and the publishes other nodes forward here are stored.
fn connect_cluster(node: &Arc<ClusterNode>, broker: &Broker) {
    let weak = broker.downgrade();
    node.set_on_lost(OnLost(Arc::new(move |topic| {
        if let Some(broker) = weak.upgrade() {
            broker.release_topic(topic);
        }
    })));
    broker.set_forward(node.forwarder());
    let weak = broker.downgrade();
    node.set_on_publish(OnPublish(Arc::new(move |from, topic, batch| {
        let broker = weak.upgrade();
        Box::pin(async move {
            match broker {
                Some(broker) => broker.publish_forwarded(from, &topic, batch).await,
                None => batch
                    .iter()
                    .map(|_| Err(BrokerError::ShuttingDown))
                    .collect(),
            }
        })
    })));
}

/// Binds a TCP listener and reports the address it got.
async fn bind_tcp(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(tokio::net::TcpListener, SocketAddr), ServerError> {
    let bind = |source| ServerError::Bind { what, addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(bind)?;
    let local = listener.local_addr().map_err(bind)?;
    Ok((listener, local))
}

/// Installs the broker's access hook when callers authenticate: the rules' grants, or none
/// (then only an auth server's answers grant anything). Warns about what is exposed.
fn install_access(config: &Config, broker: &Broker, rules: Option<&Reloader>) {
    if !config.authenticates() {
        for (listener, addr) in config.exposed_without_auth() {
            tracing::warn!(%addr, "{listener} accepts anyone without authentication (allow_anonymous = true)");
        }
        return;
    }
    let grants = rules.map(|r| r.rules().current().spec().acl.clone());
    match rules {
        Some(reloader) => broker.set_access(reloader.rules()),
        None => broker.set_access(Arc::new(NoGrants)),
    };
    if grants.is_none_or(|acl| acl.is_empty()) && config.auth.auth_http_address.is_empty() {
        tracing::warn!("authentication is configured but the rules grant nothing: every operation will be refused; add [[grant]] tables to the rules file");
    }
}

/// Accepts connections until shutdown, at most `max` at once.
async fn accept(
    endpoint: quinn::Endpoint,
    broker: Broker,
    rules: Option<Reloader>,
    auth: Arc<Authenticator>,
    max: usize,
    tasks: TaskTracker,
) {
    let permits = Arc::new(Semaphore::new(max));
    loop {
        let incoming = tokio::select! {
            _ = broker.shutting_down() => return,
            incoming = endpoint.accept() => incoming,
        };
        let Some(incoming) = incoming else { return };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(remote = %incoming.remote_address(), max, "connection refused: at the connection limit");
            incoming.refuse();
            continue;
        };
        let (broker, rules, auth) = (broker.clone(), rules.clone(), Arc::clone(&auth));
        tasks.spawn(async move {
            match incoming.await {
                Ok(conn) => crate::session::run_connection(conn, broker, rules, auth).await,
                Err(e) => tracing::debug!(error = %e, "handshake failed"),
            }
            drop(permit);
        });
    }
}
