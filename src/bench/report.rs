//! The bench's results, as JSON or a short text summary.

use serde::Serialize;

use super::{BenchArgs, Outcome};

/// Publish→deliver latency percentiles, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct LatencyUs {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// What a bench run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// `quic`, or `nsq` for the NSQ TCP listener.
    pub protocol: &'static str,
    pub producers: usize,
    pub consumers: usize,
    /// Message body bytes.
    pub size: usize,
    pub batch: usize,
    pub rdy: u32,
    /// Messages the broker confirmed.
    pub published: u64,
    /// Messages delivered to the consumers (and FIN'd).
    pub consumed: u64,
    /// Messages whose publish failed, plus published messages never delivered before the
    /// drain timeout.
    pub errors: u64,
    /// From the first publish until the last delivery (or the last confirm, without consumers).
    pub elapsed_secs: f64,
    /// Confirmed messages per second, over the publishing time.
    pub publish_rate: f64,
    /// Delivered messages per second, from the first publish to the last delivery.
    pub consume_rate: f64,
    /// Publish → delivery, measured by the consumers.
    pub latency_us: LatencyUs,
    /// Publish request sent → PUB-OK received, per request (a batch with MPUB).
    pub publish_latency_us: LatencyUs,
    /// Peak RSS of the broker the bench started itself (`VmHWM`); `None` with `--addr`.
    pub broker_peak_rss_bytes: Option<u64>,
}

impl BenchReport {
    pub(super) fn new(
        args: &BenchArgs,
        outcome: Outcome,
        broker_peak_rss_bytes: Option<u64>,
    ) -> BenchReport {
        let rate = |n: u64, secs: f64| if secs > 0.0 { n as f64 / secs } else { 0.0 };
        let summary = |h: &hdrhistogram::Histogram<u64>| {
            if h.is_empty() {
                LatencyUs::default()
            } else {
                LatencyUs {
                    p50: h.value_at_quantile(0.50),
                    p99: h.value_at_quantile(0.99),
                    p999: h.value_at_quantile(0.999),
                    max: h.max(),
                }
            }
        };
        let latency_us = summary(&outcome.latency);
        let publish_latency_us = summary(&outcome.publish_latency);
        BenchReport {
            protocol: if args.nsq { "nsq" } else { "quic" },
            producers: args.producers,
            consumers: args.consumers,
            size: args.size,
            batch: args.batch,
            rdy: args.rdy,
            published: outcome.published,
            consumed: outcome.consumed,
            errors: outcome.publish_errors + outcome.shortfall,
            elapsed_secs: outcome.elapsed_secs,
            publish_rate: rate(outcome.published, outcome.publish_secs),
            consume_rate: rate(outcome.consumed, outcome.consume_secs),
            latency_us,
            publish_latency_us,
            broker_peak_rss_bytes,
        }
    }

    /// The summary as text, one fact per line.
    pub fn to_text(&self) -> String {
        let mut out = format!(
            "quiver bench ({}): {} producer{}, {} consumer{}, {}-byte messages, {}, rdy {}\n",
            self.protocol,
            self.producers,
            plural(self.producers),
            self.consumers,
            plural(self.consumers),
            self.size,
            if self.batch == 1 {
                "PUB".to_string()
            } else {
                format!("MPUB x{}", self.batch)
            },
            self.rdy,
        );
        let mb_per_s = self.publish_rate * self.size as f64 / 1e6;
        out += &format!(
            "  published  {:>13}  {:>11} msg/s  ({mb_per_s:.1} MB/s)\n",
            group(self.published),
            group(self.publish_rate.round() as u64),
        );
        if self.consumers > 0 {
            out += &format!(
                "  consumed   {:>13}  {:>11} msg/s\n",
                group(self.consumed),
                group(self.consume_rate.round() as u64),
            );
        }
        out += &format!("  errors     {:>13}\n", group(self.errors));
        out += &format!("  elapsed    {:>13.2} s\n", self.elapsed_secs);
        if self.consumers > 0 {
            let l = &self.latency_us;
            out += &format!(
                "  latency    p50 {}  p99 {}  p99.9 {}  max {}\n",
                micros(l.p50),
                micros(l.p99),
                micros(l.p999),
                micros(l.max),
            );
        }
        let l = &self.publish_latency_us;
        out += &format!(
            "  confirm    p50 {}  p99 {}  p99.9 {}  max {}\n",
            micros(l.p50),
            micros(l.p99),
            micros(l.p999),
            micros(l.max),
        );
        if let Some(rss) = self.broker_peak_rss_bytes {
            out += &format!(
                "  broker     peak RSS {:.1} MiB\n",
                rss as f64 / (1024.0 * 1024.0)
            );
        }
        out
    }

    /// Prints [`BenchReport::to_text`] to stdout.
    pub fn print_text(&self) {
        print!("{}", self.to_text());
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `1234567` → `1,234,567`.
pub(super) fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Microseconds in the most readable unit.
fn micros(us: u64) -> String {
    match us {
        0..1_000 => format!("{us} µs"),
        1_000..1_000_000 => format!("{:.2} ms", us as f64 / 1e3),
        _ => format!("{:.2} s", us as f64 / 1e6),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped() {
        assert_eq!(group(0), "0");
        assert_eq!(group(999), "999");
        assert_eq!(group(1000), "1,000");
        assert_eq!(group(1_234_567), "1,234,567");
    }

    #[test]
    fn latencies_pick_a_unit() {
        assert_eq!(micros(850), "850 µs");
        assert_eq!(micros(1_250), "1.25 ms");
        assert_eq!(micros(2_500_000), "2.50 s");
    }
}
