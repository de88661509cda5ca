//! `/stats` as nsqd's text (`printStats`), line for line, with Go's duration and RFC 3339
//! formats (times in UTC).

use std::fmt::Write;
use std::time::{Duration, SystemTime};

use super::stats::{Client, NsqdStats};
use super::unix_secs;

/// The text `/stats` page for `stats`, for a node started at `started`, at `now`.
pub(crate) fn render(stats: &NsqdStats, started: SystemTime, now: SystemTime) -> String {
    let mut w = String::new();
    let uptime = now.duration_since(started).unwrap_or_default();
    // `write!` to a String cannot fail.
    let _ = write!(
        w,
        "nsqd v{} (built w/rust)\nstart_time {}\nuptime {}\n\nHealth: {}\n",
        stats.version,
        rfc3339(started),
        go_duration(uptime),
        stats.health
    );
    if let Some(m) = &stats.memory {
        w.push_str("\nMemory:\n");
        let rows = [
            ("heap_objects", m.heap_objects),
            ("heap_idle_bytes", m.heap_idle_bytes),
            ("heap_in_use_bytes", m.heap_in_use_bytes),
            ("heap_released_bytes", m.heap_released_bytes),
            ("gc_pause_usec_100", m.gc_pause_usec_100),
            ("gc_pause_usec_99", m.gc_pause_usec_99),
            ("gc_pause_usec_95", m.gc_pause_usec_95),
            ("next_gc_bytes", m.next_gc_bytes),
            ("gc_total_runs", u64::from(m.gc_total_runs)),
        ];
        for (name, value) in rows {
            let _ = writeln!(w, "   {name:<25}\t{value}");
        }
    }
    w.push_str(if stats.topics.is_empty() {
        "\nTopics: None\n"
    } else {
        "\nTopics:"
    });
    for t in &stats.topics {
        let _ = writeln!(
            w,
            "\n{}[{:<15}] depth: {:<5} be-depth: {:<5} msgs: {:<8} e2e%: ",
            if t.paused { "*P " } else { "   " },
            t.topic_name,
            t.depth,
            t.backend_depth,
            t.message_count,
        );
        for c in &t.channels {
            let _ = writeln!(
                w,
                "{}[{:<25}] depth: {:<5} be-depth: {:<5} inflt: {:<4} def: {:<4} re-q: {:<5} timeout: {:<5} msgs: {:<8} e2e%: ",
                if c.paused { "   *P " } else { "      " },
                c.channel_name,
                c.depth,
                c.backend_depth,
                c.in_flight_count,
                c.deferred_count,
                c.requeue_count,
                c.timeout_count,
                c.message_count,
            );
            for client in &c.clients {
                let _ = writeln!(w, "        {}", client_line(client, now));
            }
        }
    }
    if stats.producers.is_empty() {
        w.push_str("\nProducers: None\n");
    } else {
        w.push_str("\nProducers:\n");
        for client in &stats.producers {
            let _ = writeln!(w, "   {}", client_line(client, now));
        }
    }
    w
}

/// A consumer as nsqd's `ClientV2Stats.String()`.
fn client_line(c: &Client, now: SystemTime) -> String {
    let port = c
        .remote_address
        .parse::<std::net::SocketAddr>()
        .map(|a| a.port().to_string())
        .unwrap_or_default();
    let id = format!("{}:{} {}", c.hostname, port, c.user_agent);
    let connected = if c.connect_ts > 0 {
        let since = (unix_secs(now) - c.connect_ts).max(0);
        go_duration(Duration::from_secs(since.unsigned_abs()))
    } else {
        "unknown".to_string()
    };
    format!(
        "[{} {:<21}] state: {} inflt: {:<4} rdy: {:<4} fin: {:<8} re-q: {:<8} msgs: {:<8} connected: {}",
        c.version,
        id,
        c.state,
        c.in_flight_count,
        c.ready_count,
        c.finish_count,
        c.requeue_count,
        c.message_count,
        connected
    )
}

/// `d` as Go's `time.Duration.String()`: `0s`, `1.5ms`, `2m3.25s`, `1h0m0s`.
pub(crate) fn go_duration(d: Duration) -> String {
    let nanos = d.as_nanos();
    if nanos == 0 {
        return "0s".to_string();
    }
    if nanos < 1_000_000_000 {
        let (unit, scale) = if nanos < 1_000 {
            ("ns", 1)
        } else if nanos < 1_000_000 {
            ("µs", 1_000)
        } else {
            ("ms", 1_000_000)
        };
        return format!("{}{unit}", decimal(nanos, scale));
    }
    let secs = nanos / 1_000_000_000;
    let mut out = String::new();
    if secs >= 3600 {
        let _ = write!(out, "{}h", secs / 3600);
    }
    if secs >= 60 {
        let _ = write!(out, "{}m", secs / 60 % 60);
    }
    let rest = nanos % 60_000_000_000;
    let _ = write!(out, "{}s", decimal(rest, 1_000_000_000));
    out
}

/// `value / scale` in decimal, without trailing zeros (`scale` is a power of ten).
fn decimal(value: u128, scale: u128) -> String {
    let (whole, fraction) = (value / scale, value % scale);
    if fraction == 0 {
        return whole.to_string();
    }
    let width = scale.ilog10() as usize;
    let digits = format!("{fraction:0width$}");
    format!("{whole}.{}", digits.trim_end_matches('0'))
}

/// `time` in RFC 3339, UTC, to the second.
pub(crate) fn rfc3339(time: SystemTime) -> String {
    let secs = unix_secs(time);
    let (days, day_secs) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        day_secs / 3600,
        day_secs / 60 % 60,
        day_secs % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::nsq::http::stats::{topics, Memory};
    use std::time::UNIX_EPOCH;

    #[test]
    fn durations_read_as_go_writes_them() {
        let cases = [
            (Duration::ZERO, "0s"),
            (Duration::from_nanos(999), "999ns"),
            (Duration::from_micros(1), "1µs"),
            (Duration::from_micros(1500), "1.5ms"),
            (Duration::from_millis(2500), "2.5s"),
            (Duration::from_secs(60), "1m0s"),
            (Duration::from_secs(3600), "1h0m0s"),
            (Duration::new(3723, 1), "1h2m3.000000001s"),
        ];
        for (d, text) in cases {
            assert_eq!(go_duration(d), text);
        }
    }

    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56Z");
        let t = UNIX_EPOCH + Duration::from_secs(951_868_800);
        assert_eq!(rfc3339(t), "2000-03-01T00:00:00Z");
    }

    #[test]
    fn text_lists_topics_channels_and_clients_as_nsqd() {
        let started = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let mut stats = NsqdStats {
            version: "1.3.0".into(),
            health: "OK".into(),
            start_time: 0,
            topics: topics(crate::nsq::http::stats::tests::sample(), "", true),
            memory: Some(Memory::default()),
            producers: Vec::new(),
        };
        stats.topics[0].paused = true;
        let text = render(&stats, started, started + Duration::from_secs(90));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "nsqd v1.3.0 (built w/rust)");
        assert_eq!(lines[1], "start_time 2023-11-14T22:13:20Z");
        assert_eq!(lines[2], "uptime 1m30s");
        assert_eq!(lines[4], "Health: OK");
        assert!(
            text.contains("\n   heap_objects             \t0\n"),
            "{text}"
        );
        assert!(text.contains("\nTopics:\n*P [a              ] depth: 0     be-depth: 0     msgs: 9        e2e%: \n"), "{text}");
        assert!(text.contains("\n      [c                        ] depth: 4     be-depth: 4     inflt: 2    def: 1    re-q: 1     timeout: 2     msgs: 9        e2e%: \n"), "{text}");
        assert!(text.contains("\n        [V2 127.0.0.1:5000       ] state: 3 inflt: 2    rdy: 10   fin: 3        re-q: 1        msgs: 5        connected: unknown\n"), "{text}");
        assert!(text.ends_with("\nProducers: None\n"), "{text}");

        stats.topics.clear();
        stats.memory = None;
        let empty = render(&stats, started, started);
        assert!(
            empty.contains("uptime 0s\n\nHealth: OK\n\nTopics: None\n\nProducers: None\n"),
            "{empty}"
        );
    }
}
