//! `quiver plugin test`: a plugin run on sample messages exactly as the broker runs it (the
//! same host, the default limits: 10 ms of CPU per call, 16 MiB, 1 s to start), without a
//! broker.
//!
//! Output, one line per message: `keep` or `skip` for filters and samplers; for routers
//! `channels=a,b forward=t` (each part only when not empty) or `unrouted`; after a fault,
//! `fault: <why>`, and the next message gets a fresh instance (as the broker would after its
//! backoff; a sampler's state starts again). `--call-timeout` lifts the 10 ms bound (and
//! the wall-clock backstop with it), for slow debug builds of a plugin. With `--bench N`
//! each line adds the median nanoseconds per call over [`BENCH_ROUNDS`] rounds of N / 5
//! calls; with `--json` each line is a JSON object instead.

use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use crate::plugin::{
    Instance, Plugin, PluginFault, PluginHost, PluginKind, PluginLimits, Route, MAX_BATCH,
};

use super::sample::{check_params, parse_samples, SampleDefaults, SampleMessage};
use super::{AuthoringError, TestArgs};

/// Rounds a `--bench` is split into; the median round is reported.
pub const BENCH_ROUNDS: u64 = 5;

/// What a plugin decided for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Keep(bool),
    Route(Route),
    Fault(PluginFault),
}

/// Runs `quiver plugin test`, writing one line per message to `out`.
pub fn run(args: &TestArgs, out: &mut impl Write) -> Result<(), AuthoringError> {
    check_params(&args.params)?;
    let samples = read_samples(args)?;
    let mut limits = PluginLimits::default();
    limits.call_timeout = args.call_timeout.unwrap_or(limits.call_timeout);
    let host = PluginHost::new(limits, None)?;
    let plugin = host.load(&args.file, args.kind)?;
    let mut trial = Trial::start(&host, plugin, args.params.clone())?;
    for msg in &samples {
        let decision = trial.decide(msg)?;
        let (decision, ns_per_call) = match (decision, args.bench) {
            (Decision::Fault(fault), _) => (Decision::Fault(fault), None),
            (decision, None) => (decision, None),
            (decision, Some(calls)) => match trial.bench(msg, calls)? {
                Ok(bench) => (decision, Some(bench)),
                Err(fault) => (Decision::Fault(fault), None),
            },
        };
        let line = if args.json {
            json_line(&decision, ns_per_call)
        } else {
            text_line(&decision, ns_per_call)
        };
        writeln!(out, "{line}").map_err(AuthoringError::Stdout)?;
    }
    Ok(())
}

fn read_samples(args: &TestArgs) -> Result<Vec<SampleMessage>, AuthoringError> {
    let file = match &args.messages_file {
        Some(path) => Some((path.display().to_string(), read_text(path)?)),
        None => None,
    };
    let mut defaults = SampleDefaults::new(args.topic.clone(), args.kind);
    let file = file
        .as_ref()
        .map(|(name, text)| (name.as_str(), text.as_str()));
    parse_samples(&args.messages, file, &mut defaults)
}

fn read_text(path: &Path) -> Result<String, AuthoringError> {
    let read_error = |source| AuthoringError::ReadMessages {
        path: path.to_owned(),
        source,
    };
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(read_error)?;
        return Ok(text);
    }
    std::fs::read_to_string(path).map_err(read_error)
}

/// One plugin binding, replacing its instance after a fault.
struct Trial<'h> {
    host: &'h PluginHost,
    plugin: Arc<Plugin>,
    params: Vec<(String, String)>,
    /// `None` after a fault, until the next message starts a fresh one.
    instance: Option<Instance>,
}

impl<'h> Trial<'h> {
    /// Instantiates the plugin and runs `init`: a refusal is an error.
    fn start(
        host: &'h PluginHost,
        plugin: Arc<Plugin>,
        params: Vec<(String, String)>,
    ) -> Result<Trial<'h>, AuthoringError> {
        let instance = host.instantiate(&plugin, &params)?;
        Ok(Trial {
            host,
            plugin,
            params,
            instance: Some(instance),
        })
    }

    fn decide(&mut self, msg: &SampleMessage) -> Result<Decision, AuthoringError> {
        let instance = match &mut self.instance {
            Some(instance) => instance,
            None => self
                .instance
                .insert(self.host.instantiate(&self.plugin, &self.params)?),
        };
        let view = msg.view();
        let decision = match self.plugin.kind() {
            PluginKind::Router => instance.route(&view).map(Decision::Route),
            PluginKind::Filter | PluginKind::Sampler => instance.keep(&view).map(Decision::Keep),
        };
        Ok(decision.unwrap_or_else(|fault| {
            self.instance = None;
            Decision::Fault(fault)
        }))
    }

    /// Median nanoseconds per call over the rounds (and, for filters and samplers, per
    /// message in `keep-batch` calls of [`MAX_BATCH`] messages, as the broker makes them), or
    /// the fault of a call that faulted (the instance is then replaced for the next message).
    fn bench(
        &mut self,
        msg: &SampleMessage,
        calls: u64,
    ) -> Result<Result<Bench, PluginFault>, AuthoringError> {
        let per_round = (calls / BENCH_ROUNDS).max(1);
        let mut rounds = Vec::new();
        for _ in 0..BENCH_ROUNDS {
            let started = Instant::now();
            for _ in 0..per_round {
                if let Decision::Fault(fault) = self.decide(msg)? {
                    return Ok(Err(fault));
                }
            }
            rounds.push(per(started, per_round));
        }
        let per_call = median(&mut rounds);
        let batched = match (self.plugin.kind(), &mut self.instance) {
            (PluginKind::Router, _) | (_, None) => None,
            (PluginKind::Filter | PluginKind::Sampler, Some(instance)) => {
                let view = msg.view();
                let batch = vec![view; MAX_BATCH];
                let per_round = per_round.div_ceil(MAX_BATCH as u64);
                rounds.clear();
                for _ in 0..BENCH_ROUNDS {
                    let started = Instant::now();
                    for _ in 0..per_round {
                        if let Err(fault) = instance.keep_batch(&batch) {
                            self.instance = None;
                            return Ok(Err(fault));
                        }
                    }
                    rounds.push(per(started, per_round * MAX_BATCH as u64));
                }
                Some(median(&mut rounds))
            }
        };
        Ok(Ok(Bench { per_call, batched }))
    }
}

/// What `--bench` measured, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Bench {
    per_call: u64,
    /// Per message, in batch calls; filters and samplers only.
    batched: Option<u64>,
}

fn per(started: Instant, n: u64) -> u64 {
    u64::try_from(started.elapsed().as_nanos() / u128::from(n)).unwrap_or(u64::MAX)
}

fn median(rounds: &mut [u64]) -> u64 {
    rounds.sort_unstable();
    rounds[rounds.len() / 2]
}

fn text_line(decision: &Decision, bench: Option<Bench>) -> String {
    let text = match decision {
        Decision::Keep(true) => "keep".to_owned(),
        Decision::Keep(false) => "skip".to_owned(),
        Decision::Route(route) if route.is_unrouted() => "unrouted".to_owned(),
        Decision::Route(route) => {
            let mut parts = Vec::new();
            if !route.channels.is_empty() {
                parts.push(format!("channels={}", route.channels.join(",")));
            }
            if !route.forward.is_empty() {
                parts.push(format!("forward={}", route.forward.join(",")));
            }
            parts.join(" ")
        }
        Decision::Fault(fault) => format!("fault: {fault}"),
    };
    match bench {
        Some(Bench {
            per_call,
            batched: Some(batched),
        }) => format!("{text}\t{per_call} ns/call\t{batched} ns/msg in batches of {MAX_BATCH}"),
        Some(Bench { per_call, .. }) => format!("{text}\t{per_call} ns/call"),
        None => text,
    }
}

fn json_line(decision: &Decision, bench: Option<Bench>) -> String {
    let mut value = match decision {
        Decision::Keep(keep) => serde_json::json!({
            "decision": if *keep { "keep" } else { "skip" },
        }),
        Decision::Route(route) => serde_json::json!({
            "decision": if route.is_unrouted() { "unrouted" } else { "route" },
            "channels": route.channels,
            "forward": route.forward,
        }),
        Decision::Fault(fault) => serde_json::json!({
            "decision": "fault",
            "fault": fault.to_string(),
        }),
    };
    if let (Some(bench), Some(object)) = (bench, value.as_object_mut()) {
        object.insert("ns_per_call".to_owned(), bench.per_call.into());
        if let Some(batched) = bench.batched {
            object.insert("ns_per_msg_batched".to_owned(), batched.into());
        }
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(channels: &[&str], forward: &[&str]) -> Decision {
        let owned = |names: &[&str]| names.iter().map(|s| (*s).to_owned()).collect();
        Decision::Route(Route {
            channels: owned(channels),
            forward: owned(forward),
        })
    }

    #[test]
    fn text_lines_name_the_decision() {
        assert_eq!(text_line(&Decision::Keep(true), None), "keep");
        let bench = |per_call, batched| {
            Some(Bench {
                per_call,
                batched: Some(batched),
            })
        };
        assert_eq!(
            text_line(&Decision::Keep(false), bench(812, 300)),
            "skip\t812 ns/call\t300 ns/msg in batches of 64"
        );
        let route_bench = Some(Bench {
            per_call: 900,
            batched: None,
        });
        assert_eq!(
            text_line(&route(&["a"], &[]), route_bench),
            "channels=a\t900 ns/call"
        );
        assert_eq!(text_line(&route(&[], &[]), None), "unrouted");
        assert_eq!(text_line(&route(&["a", "b"], &[]), None), "channels=a,b");
        assert_eq!(
            text_line(&route(&["a"], &["t"]), None),
            "channels=a forward=t"
        );
        assert_eq!(text_line(&route(&[], &["t"]), None), "forward=t");
        assert_eq!(
            text_line(
                &Decision::Fault(PluginFault::Timeout(crate::plugin::TimeoutKind::Cpu)),
                None
            ),
            "fault: plugin call timed out: it used its CPU budget"
        );
    }

    #[test]
    fn json_lines_carry_the_same_facts() {
        let bench = Some(Bench {
            per_call: 5,
            batched: Some(2),
        });
        assert_eq!(
            json_line(&Decision::Keep(false), bench),
            r#"{"decision":"skip","ns_per_call":5,"ns_per_msg_batched":2}"#
        );
        assert_eq!(
            json_line(&route(&["a"], &[]), None),
            r#"{"channels":["a"],"decision":"route","forward":[]}"#
        );
        assert_eq!(
            json_line(&Decision::Fault(PluginFault::Trap("boom".into())), None),
            r#"{"decision":"fault","fault":"plugin trapped: boom"}"#
        );
    }
}
