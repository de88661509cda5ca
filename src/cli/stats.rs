//! `quiver stats`: the broker's stats over an admin stream, printed as a table, a line per
//! topic, ordered channel and consumer, and a line per plugin binding.

use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Result;
use serde::Deserialize;

use quiver::broker::BrokerStats;
use quiver::plugin::{BindingStats, BreakerState, BreakerStatus};
use quiver::protocol::AdminRequest;

use super::{connect, StatsArgs};

/// The stats answer: the broker's, and the rules' bindings when the broker has rules.
#[derive(Debug, Deserialize)]
struct StatsAnswer {
    #[serde(flatten)]
    broker: BrokerStats,
    rules: Option<RulesAnswer>,
}

#[derive(Debug, Deserialize)]
struct RulesAnswer {
    bindings: Vec<BindingAnswer>,
}

/// The part of a binding's status `quiver stats` prints.
#[derive(Debug, Deserialize)]
struct BindingAnswer {
    topic: String,
    channel: Option<String>,
    plugin: String,
    kind: String,
    on_failure: String,
    stats: BindingStats,
    breaker: Option<BreakerStatus>,
}

pub(super) async fn stats(args: StatsArgs) -> Result<()> {
    let client = connect(&args.connect).await?;
    let request = AdminRequest::Stats {
        topic: args.topic.clone(),
    };
    let json = client.admin(request).await?;
    client.close().await;
    if args.json {
        let value: serde_json::Value = serde_json::from_slice(&json)?;
        println!("{}", serde_json::to_string_pretty(&value)?);
        return Ok(());
    }
    let answer: StatsAnswer = serde_json::from_slice(&json)?;
    let stats = answer.broker;
    let mut rows = vec![[
        "TOPIC",
        "CHANNEL",
        "DEPTH",
        "IN_FLIGHT",
        "DEFERRED",
        "REQUEUED",
        "TIMED_OUT",
        "DEAD",
        "MESSAGES",
        "CONSUMERS",
        "STATE_LAG_MS",
    ]
    .map(String::from)];
    for t in &stats.topics {
        let paused = |p: bool, name: &str| {
            if p {
                format!("{name} (paused)")
            } else {
                name.to_string()
            }
        };
        rows.push([
            paused(t.paused, &t.name),
            "-".into(),
            t.depth.to_string(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            "-".into(),
            t.message_count.to_string(),
            "-".into(),
            "-".into(),
        ]);
        for c in &t.channels {
            rows.push([
                String::new(),
                paused(c.paused, &c.name),
                c.depth.to_string(),
                c.in_flight.to_string(),
                c.deferred.to_string(),
                c.requeued.to_string(),
                c.timed_out.to_string(),
                c.dead_lettered.to_string(),
                c.message_count.to_string(),
                c.consumers.len().to_string(),
                format!("{}/{}", c.state_lag_ms, c.state_lag_max_ms),
            ]);
        }
    }
    let widths: Vec<usize> = (0..11)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    if !stats.topics.is_empty() {
        println!();
    }
    for t in &stats.topics {
        println!(
            "{}: log {} bytes in {} segment{}, fsync p50 {} µs p99 {} µs ({} fsyncs), \
             retention dropped {}, corrupt {}",
            t.name,
            t.retained_bytes,
            t.segments,
            if t.segments == 1 { "" } else { "s" },
            t.fsync_p50_us,
            t.fsync_p99_us,
            t.fsyncs,
            t.retention_dropped_messages,
            t.corrupt_records,
        );
        if t.dedup_window_ms > 0 || t.duplicates > 0 {
            println!(
                "{}: dedup window {} ms: {} ids, {} duplicates, {} evicted early",
                t.name, t.dedup_window_ms, t.dedup_ids, t.duplicates, t.dedup_evicted,
            );
        }
        for c in &t.channels {
            if !c.ordering.is_empty() && c.ordering != "none" {
                println!(
                    "  {}/{} ordered by {}: {} active keys, {} messages waiting on their key",
                    t.name, c.name, c.ordering, c.active_keys, c.waiting_on_key
                );
            }
            for consumer in &c.consumers {
                println!(
                    "  {}/{} consumer {}: {} from {}, RDY {}, in flight {}",
                    t.name,
                    c.name,
                    consumer.id,
                    consumer.principal,
                    consumer.remote,
                    consumer.rdy,
                    consumer.in_flight
                );
            }
        }
    }
    let a = &stats.access;
    if a.auth_failures + a.denied_publish + a.denied_subscribe + a.denied_admin > 0 {
        println!(
            "access: {} authentication failures; denied {} publishes, {} subscribes, {} admin requests",
            a.auth_failures, a.denied_publish, a.denied_subscribe, a.denied_admin
        );
    }
    for binding in answer.rules.iter().flat_map(|r| &r.bindings) {
        print_binding(binding);
    }
    Ok(())
}

/// One line per plugin binding: its calls, faults and circuit breaker.
fn print_binding(b: &BindingAnswer) {
    let s = &b.stats;
    let faults = s.traps + s.cpu_timeouts + s.wall_timeouts + s.out_of_memory + s.too_large;
    let place = match &b.channel {
        Some(channel) => format!("{}/{channel}", b.topic),
        None => b.topic.clone(),
    };
    let breaker = b.breaker.map_or_else(String::new, |breaker| {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let secs = |ms: u64| ms.div_ceil(1000);
        let trial = match breaker.next_trial_ms {
            Some(at) => format!(", next trial in {}s", secs(at.saturating_sub(now))),
            None => String::new(),
        };
        let since = match breaker.state {
            BreakerState::Closed if breaker.openings == 0 => String::new(),
            _ => format!(" for {}s", secs(now.saturating_sub(breaker.since_ms))),
        };
        let plural = if breaker.openings == 1 { "" } else { "s" };
        format!(
            "; breaker {}{since}{trial}, {} opening{plural}",
            breaker.state.as_str(),
            breaker.openings
        )
    });
    println!(
        "{place} {} {} (on_failure {}): {} calls, {faults} faults, {} refused by the breaker{breaker}",
        b.kind, b.plugin, b.on_failure, s.calls, s.breaker_refused,
    );
}
