//! The nsqd HTTP API.

use tokio::net::TcpListener;

use crate::broker::Broker;

/// Serves the nsqd HTTP API until the broker shuts down.
pub async fn serve(listener: TcpListener, broker: Broker) {
    let _ = (listener, broker);
}
