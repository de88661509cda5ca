//! `quiver sub`: prints a channel's messages, FINning each.
//!
//! It subscribes where the topic is served (on a cluster, its leader). When the subscription
//! is lost — the connection drops or stops answering, or the node ends it because it no
//! longer serves the topic (`E_NOT_LEADER`, `E_UNAVAILABLE`) or shuts down — it finds the
//! topic's leader again through `--addr` and the `--seed` nodes, in turn, and subscribes
//! there. What it had in flight is delivered again by the broker, so a message whose FIN
//! was lost with the connection is printed again (at least once). `--no-reconnect` ends
//! instead, as before.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};

use quiver::client::{
    Client, ClientError, ClientOptions, SubEvent, SubscribeOptions, Subscription,
};
use quiver::message::Delivery;
use quiver::protocol::ErrorCode;

use super::{client_options, SubArgs, LOCATE_PATIENCE};

/// How long a connection may stay silent before it counts as lost, when reconnecting: a
/// killed or hung leader is noticed within this.
const NOTICE_LOSS: Duration = Duration::from_secs(5);
/// The longest wait between two attempts to subscribe again.
const RETRY_MAX: Duration = Duration::from_secs(2);

/// How one subscription ended.
enum Ended {
    /// The count was reached, or the user interrupted: close gracefully.
    Done,
    /// The broker closed the stream.
    Closed,
    /// Lost: subscribe again (unless `--no-reconnect`).
    Lost(anyhow::Error),
}

pub(super) async fn subscribe(args: SubArgs) -> Result<()> {
    let reconnect = !args.no_reconnect;
    let mut options = client_options(&args.connect)?;
    if reconnect {
        options.idle_timeout = Some(NOTICE_LOSS);
    }
    let limit = args.count.unwrap_or(u64::MAX);
    let mut finished = 0u64;
    let mut out = std::io::stdout().lock();
    let nodes: Vec<SocketAddr> = std::iter::once(args.connect.addr)
        .chain(args.seeds.iter().copied())
        .collect();
    let (mut turn, mut wait, mut lost) = (0, Duration::from_millis(100), false);
    loop {
        options.addr = nodes[turn % nodes.len()];
        let (client, mut sub) = match subscribed(&options, &args).await {
            Ok(subscribed) => subscribed,
            Err(e) if lost => {
                eprintln!("warning: {e:#}; trying again");
                turn += 1;
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(RETRY_MAX);
                continue;
            }
            Err(e) => return Err(e),
        };
        if lost {
            eprintln!("subscribed again at {}", client.remote_addr());
        }
        if finished == limit {
            return Ok(());
        }
        wait = Duration::from_millis(100);
        match consume(&mut sub, &args, limit, &mut finished, &mut out).await? {
            Ended::Done => {
                close(&mut sub).await?;
                client.close().await;
                return Ok(());
            }
            Ended::Closed => return Ok(()),
            Ended::Lost(e) if reconnect => {
                eprintln!("warning: the subscription was lost ({e:#}); subscribing again");
                // Ask another node first: the one asked last may be the one that died.
                (lost, turn) = (true, turn + 1);
            }
            Ended::Lost(e) => return Err(e),
        }
    }
}

/// Connects to the node serving the topic (asking the one at `options.addr`) and
/// subscribes.
async fn subscribed(options: &ClientOptions, args: &SubArgs) -> Result<(Client, Subscription)> {
    let (topic, channel) = (&args.topic, &args.channel);
    let client = Client::connect_serving(options, topic, Some(channel), LOCATE_PATIENCE)
        .await
        .with_context(|| {
            format!(
                "connecting to the broker serving {topic} (via {})",
                options.addr
            )
        })?;
    let sub_options = SubscribeOptions {
        msg_timeout: args.msg_timeout,
    };
    match client.subscribe(topic, channel, sub_options).await {
        Ok(sub) => Ok((client, sub)),
        Err(e) => {
            client.close().await;
            Err(e).with_context(|| format!("subscribing to {topic}/{channel}"))
        }
    }
}

/// Prints and FINs messages until the count is reached, the user interrupts, or the
/// subscription ends.
async fn consume(
    sub: &mut Subscription,
    args: &SubArgs,
    limit: u64,
    finished: &mut u64,
    out: &mut impl Write,
) -> Result<Ended> {
    let reconnect = !args.no_reconnect;
    // The connection's failures are a lost subscription; with --no-reconnect, errors.
    let lost = |e: ClientError| Ended::Lost(anyhow::Error::new(e));
    // In flight + finished never passes the count, so no message is taken only to be given back.
    let mut rdy = u64::from(args.rdy.max(1)).min(limit - *finished);
    if let Err(e) = sub.rdy(rdy as u32).await {
        return Ok(lost(e));
    }
    loop {
        let event = tokio::select! {
            _ = tokio::signal::ctrl_c() => return Ok(Ended::Done),
            event = sub.next_event() => event,
        };
        let delivery: Delivery = match event {
            Some(SubEvent::Message(d)) if *finished < limit => d,
            Some(SubEvent::Message(d)) => {
                if let Err(e) = sub.req(d.id, Duration::ZERO).await {
                    return Ok(lost(e));
                }
                continue;
            }
            Some(SubEvent::Error(e)) if e.fatal && moved(e.code) => {
                return Ok(Ended::Lost(anyhow!(e)))
            }
            Some(SubEvent::Error(e)) if e.fatal => bail!(e),
            Some(SubEvent::Error(e)) => {
                eprintln!("warning: {e}");
                continue;
            }
            Some(SubEvent::Closed) => return Ok(Ended::Closed),
            None if reconnect => return Ok(Ended::Lost(anyhow!("the connection ended"))),
            None => return Ok(Ended::Closed),
        };
        print_delivery(out, &delivery, args.json)?;
        let left = limit - *finished - 1;
        if left < rdy {
            rdy = left;
            if let Err(e) = sub.rdy(rdy as u32).await {
                return Ok(lost(e));
            }
        }
        if let Err(e) = sub.fin(delivery.id).await {
            return Ok(lost(e));
        }
        *finished += 1;
        if *finished == limit {
            return Ok(Ended::Done);
        }
    }
}

/// Fatal errors that say the topic is (or will be) served elsewhere: subscribe again.
fn moved(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotLeader | ErrorCode::Unavailable | ErrorCode::ShuttingDown
    )
}

/// CLS, giving back what arrives after it, until the broker closes the stream.
async fn close(sub: &mut Subscription) -> Result<()> {
    sub.cls().await?;
    while let Some(event) = sub.next_event().await {
        match event {
            SubEvent::Message(d) => sub.req(d.id, Duration::ZERO).await?,
            SubEvent::Closed => break,
            SubEvent::Error(e) if e.fatal => bail!(e),
            SubEvent::Error(_) => {}
        }
    }
    Ok(())
}

fn print_delivery(out: &mut impl Write, d: &Delivery, json: bool) -> Result<()> {
    if json {
        let headers: serde_json::Map<String, serde_json::Value> = d
            .headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.into()))
            .collect();
        let line = serde_json::json!({
            "id": d.id.to_string(),
            "timestamp_ns": d.timestamp_ns,
            "attempts": d.attempts,
            "headers": headers,
            "body": String::from_utf8_lossy(&d.body),
        });
        writeln!(out, "{line}")?;
    } else {
        out.write_all(&d.body)?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    Ok(())
}
