//! A loaded rule set: each plugin bound (and `init`ed) as the rules say, behind the broker's
//! hook traits, with the failure and unrouted policies applied to every answer.
//!
//! # Invariants
//! - A [`RuleSet`] never changes once built; [`Rules`] swaps whole sets, so one lookup
//!   answers from one set.
//! - Every hook call returns a decision: a plugin fault becomes one through the binding's
//!   `on_failure` policy, never an error or a panic.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use serde::Serialize;

use super::file::{OnFailure, PluginSpec, RulesError, RulesSpec, Unrouted};
use crate::broker::{
    Access, Admission, Broker, ChannelSettings, Decision, Gate, Hooks, Judging, Lane, MessageRef,
    Operation, Principal, RouteLimits, Router, Routing,
};
use crate::log_limit::{self, Site};
use crate::message::{ChannelName, TopicName};
use crate::plugin::{
    Binding, BindingStats, BreakerStatus, MessageView, Plugin, PluginFault, PluginHost, PluginKind,
    Route,
};

/// Reason given with a message dead-lettered because its router faulted.
pub const ROUTER_FAULT: &str = "router-fault";
/// Reason given with a message dead-lettered because a filter or sampler faulted.
pub const FILTER_FAULT: &str = "filter-fault";
/// Reason given with a message its router sent nowhere, under `unrouted = "dead-letter"`.
pub const UNROUTED: &str = "unrouted";

/// One plugin bound to a topic or channel, with its policy.
#[derive(Debug)]
pub struct Bound {
    pub topic: TopicName,
    /// None for a topic's router.
    pub channel: Option<ChannelName>,
    pub spec: PluginSpec,
    pub binding: Arc<Binding>,
    /// Answers that could not be used (a router naming an invalid channel or topic); each
    /// is handled as a fault.
    invalid_answers: Arc<AtomicU64>,
    /// Messages a router did not get to decide within its publish's time budget; each got
    /// the failure policy.
    publish_timeouts: Arc<AtomicU64>,
}

impl Bound {
    /// True when `self` can serve in place of a new binding for `spec` at this place:
    /// same plugin bytes, kind, params and policy.
    fn same_as(
        &self,
        topic: &TopicName,
        channel: Option<&ChannelName>,
        spec: &PluginSpec,
        plugin: &Plugin,
    ) -> bool {
        self.topic == *topic
            && self.channel.as_ref() == channel
            && self.binding.plugin().hash() == plugin.hash()
            && self.spec.kind == spec.kind
            && self.spec.params == spec.params
            && self.spec.on_failure == spec.on_failure
    }

    fn view<'a>(&self, msg: &MessageRef<'a>) -> MessageView<'a> {
        MessageView {
            topic: msg.topic.as_str(),
            id: msg.id,
            timestamp_ns: msg.timestamp_ns,
            attempts: msg.attempts,
            headers: msg.headers,
            body: msg.body,
        }
    }

    /// What stats show of this binding.
    pub fn status(&self) -> BindingStatus {
        let plugin = self.binding.plugin();
        BindingStatus {
            topic: self.topic.to_string(),
            channel: self.channel.as_ref().map(ToString::to_string),
            plugin: plugin.name().to_owned(),
            kind: plugin.kind().as_str(),
            hash: plugin.hash().to_owned(),
            path: self.spec.path.clone(),
            on_failure: self.spec.on_failure.as_str(),
            invalid_answers: self.invalid_answers.load(Ordering::Relaxed),
            publish_timeouts: self.publish_timeouts.load(Ordering::Relaxed),
            stats: self.binding.stats(),
            breaker: self.binding.breaker(),
        }
    }
}

/// One binding as `/stats` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BindingStatus {
    pub topic: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub channel: Option<String>,
    pub plugin: String,
    pub kind: &'static str,
    pub hash: String,
    pub path: PathBuf,
    pub on_failure: &'static str,
    /// Router answers naming an invalid channel or topic, handled as faults.
    pub invalid_answers: u64,
    /// Messages given the failure policy because their publish's routing ran out of time
    /// (`plugins.publish_timeout`).
    pub publish_timeouts: u64,
    pub stats: BindingStats,
    /// The binding's circuit breaker: closed, open or half-open, since when, next trial.
    pub breaker: BreakerStatus,
}

/// A router answer naming an invalid channel or topic: per message, so rate-limited per
/// topic and plugin.
static ANSWER_REFUSED: Site = Site::new("router answer refused; applying on_failure");

/// A topic's router with its policies.
#[derive(Debug)]
pub struct TopicRouter {
    bound: Bound,
    unrouted: Unrouted,
    limits: RouteLimits,
    /// Its calls run on the plugin pool, one at a time, in publish order.
    lane: Arc<Lane>,
}

impl Router for TopicRouter {
    fn route(&self, msg: &MessageRef<'_>, may_wait: bool) -> Decision<Routing> {
        Decision::Made(match self.bound.binding.route(&self.bound.view(msg)) {
            Ok(route) if route.is_unrouted() => self.unrouted(msg.topic),
            Ok(route) => to_routing(route).unwrap_or_else(|why| {
                self.bound.invalid_answers.fetch_add(1, Ordering::Relaxed);
                let plugin = self.bound.binding.plugin().name();
                let key = [("topic", msg.topic.as_str()), ("plugin", plugin)];
                if log_limit::allow(&ANSWER_REFUSED, &key) {
                    tracing::warn!(topic = %msg.topic, plugin, %why, "router answer refused; applying on_failure");
                }
                self.on_fault()
            }),
            Err(PluginFault::Unavailable { retry_in, .. }) if may_wait => {
                return Decision::Restarting(retry_in.max(MIN_RETRY));
            }
            Err(_) => self.on_fault(),
        })
    }

    fn overrun(&self) -> Routing {
        self.on_fault()
    }

    fn limits(&self) -> RouteLimits {
        self.limits
    }

    fn lane(&self) -> Option<&Arc<Lane>> {
        Some(&self.lane)
    }

    fn count_overrun(&self, messages: usize) {
        self.bound
            .publish_timeouts
            .fetch_add(messages as u64, Ordering::Relaxed);
    }
}

/// The shortest wait for a restarting plugin: an instance due to start now is started by the
/// next call.
const MIN_RETRY: std::time::Duration = std::time::Duration::from_millis(1);

impl TopicRouter {
    fn on_fault(&self) -> Routing {
        match self.bound.spec.on_failure {
            OnFailure::Deliver => Routing::All,
            OnFailure::Skip => Routing::Drop,
            OnFailure::DeadLetter => Routing::DeadLetter {
                reason: ROUTER_FAULT.into(),
            },
        }
    }

    fn unrouted(&self, topic: &TopicName) -> Routing {
        match self.unrouted {
            Unrouted::Drop => Routing::Drop,
            Unrouted::DeadLetter => Routing::DeadLetter {
                reason: UNROUTED.into(),
            },
            Unrouted::Reject => Routing::Reject {
                reason: format!(
                    "the router of topic {topic} sent the message to no channel or topic"
                ),
            },
        }
    }
}

/// A router's answer as names, or why one of them is not a valid name.
fn to_routing(route: Route) -> Result<Routing, String> {
    let channels = route
        .channels
        .iter()
        .map(|c| ChannelName::new(c).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    let forward = route
        .forward
        .iter()
        .map(|t| TopicName::new(t).map_err(|e| e.to_string()))
        .collect::<Result<_, _>>()?;
    Ok(Routing::To { channels, forward })
}

/// A channel's filters and samplers, in order.
#[derive(Debug)]
pub struct ChannelGate {
    chain: Vec<Bound>,
    max_wait: std::time::Duration,
    /// Its calls run on the plugin pool, one batch at a time, in log order.
    lane: Arc<Lane>,
}

impl ChannelGate {
    /// What a fault of `bound` makes of a message: `None` lets it go on down the chain.
    fn on_fault(bound: &Bound) -> Option<Admission> {
        match bound.spec.on_failure {
            OnFailure::Deliver => None,
            OnFailure::Skip => Some(Admission::Skip),
            OnFailure::DeadLetter => Some(Admission::DeadLetter {
                reason: FILTER_FAULT.into(),
            }),
        }
    }
}

impl Gate for ChannelGate {
    fn admit(&self, msg: &MessageRef<'_>) -> Admission {
        for bound in &self.chain {
            match bound.binding.keep(&bound.view(msg)) {
                Ok(true) => {}
                Ok(false) => return Admission::Skip,
                Err(_) => match bound.spec.on_failure {
                    OnFailure::Deliver => {}
                    OnFailure::Skip => return Admission::Skip,
                    OnFailure::DeadLetter => {
                        return Admission::DeadLetter {
                            reason: FILTER_FAULT.into(),
                        }
                    }
                },
            }
        }
        Admission::Keep
    }

    /// Each plugin of the chain decides, in one batch call, the messages the plugins before
    /// it kept: the same decisions as [`Gate::admit`] on each message in turn.
    fn admit_batch(&self, msgs: &[MessageRef<'_>], out: &mut Vec<Admission>) {
        let first = out.len();
        out.extend(msgs.iter().map(|_| Admission::Keep));
        // Indexes of the messages every plugin so far kept.
        let mut open: Vec<usize> = (0..msgs.len()).collect();
        let mut views = Vec::with_capacity(msgs.len());
        for bound in &self.chain {
            if open.is_empty() {
                break;
            }
            views.clear();
            views.extend(open.iter().map(|&i| bound.view(&msgs[i])));
            let decisions = bound.binding.keep_batch(&views);
            let mut still = Vec::with_capacity(open.len());
            for (i, decision) in open.into_iter().zip(decisions) {
                let admission = match decision {
                    Ok(true) => None,
                    Ok(false) => Some(Admission::Skip),
                    Err(_) => Self::on_fault(bound),
                };
                match admission {
                    Some(admission) => out[first + i] = admission,
                    None => still.push(i),
                }
            }
            open = still;
        }
    }

    /// [`ChannelGate::admit_batch`], stage by stage, keeping its place when a plugin is
    /// restarting: the messages it could not decide wait (while `may_wait`) and are decided
    /// by it when it is back, instead of all getting its failure policy. Each plugin still
    /// sees each message once, in log order.
    fn judge(
        &self,
        msgs: &[MessageRef<'_>],
        judging: &mut Judging,
        may_wait: bool,
    ) -> Option<std::time::Duration> {
        if !judging.started {
            judging.admissions = vec![Admission::Keep; msgs.len()];
            judging.todo = (0..msgs.len()).collect();
            judging.passed.clear();
            judging.stage = 0;
            judging.started = true;
        }
        let mut views = Vec::with_capacity(judging.todo.len());
        while let Some(bound) = self.chain.get(judging.stage) {
            if !judging.todo.is_empty() {
                views.clear();
                views.extend(judging.todo.iter().map(|&i| bound.view(&msgs[i])));
                let decisions = bound.binding.keep_batch(&views);
                let mut retry = Vec::new();
                let mut wait = std::time::Duration::MAX;
                for (&i, decision) in judging.todo.iter().zip(decisions) {
                    let admission = match decision {
                        Ok(true) => None,
                        Ok(false) => Some(Admission::Skip),
                        Err(PluginFault::Unavailable { retry_in, .. }) if may_wait => {
                            retry.push(i);
                            wait = wait.min(retry_in.max(MIN_RETRY));
                            continue;
                        }
                        Err(_) => Self::on_fault(bound),
                    };
                    match admission {
                        Some(admission) => judging.admissions[i] = admission,
                        None => judging.passed.push(i),
                    }
                }
                if !retry.is_empty() {
                    judging.todo = retry;
                    return Some(wait);
                }
            }
            // The next stage decides what this one kept, in log order.
            judging.passed.sort_unstable();
            judging.todo = std::mem::take(&mut judging.passed);
            judging.stage += 1;
        }
        None
    }

    fn lane(&self) -> Option<&Arc<Lane>> {
        Some(&self.lane)
    }

    fn max_wait(&self) -> std::time::Duration {
        self.max_wait
    }
}

/// Plugins bound as one rules file says.
#[derive(Debug, Default)]
pub struct RuleSet {
    spec: RulesSpec,
    routers: HashMap<TopicName, Arc<TopicRouter>>,
    gates: HashMap<(TopicName, ChannelName), Arc<ChannelGate>>,
    dead_letters: HashMap<(TopicName, ChannelName), TopicName>,
}

/// What building a set did, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BuildReport {
    /// Bindings made (each ran `init`).
    pub started: usize,
    /// Bindings taken over unchanged from the previous set.
    pub reused: usize,
}

impl RuleSet {
    /// Loads every plugin `spec` names and binds it, running its `init`; a binding of `old`
    /// that is unchanged (same place, plugin bytes, kind, params and policy) is taken over
    /// instead, state and stats included. Blocking: compiles and runs guest code.
    ///
    /// Every plugin is tried, so the error lists every one that failed.
    pub fn build(
        host: &PluginHost,
        spec: RulesSpec,
        old: Option<&RuleSet>,
    ) -> Result<(RuleSet, BuildReport), RulesError> {
        let mut builder = Builder {
            host,
            old: old.map(|o| o.bindings().collect()).unwrap_or_default(),
            loaded: HashMap::new(),
            problems: Vec::new(),
            report: BuildReport::default(),
        };
        let mut set = RuleSet::default();
        for topic in &spec.topics {
            let Some(router) = &topic.router else {
                continue;
            };
            let at = format!("topic {} router", topic.name);
            if let Some(bound) = builder.bind(&at, &topic.name, None, router) {
                let limits = host.limits();
                let router = TopicRouter {
                    bound,
                    unrouted: topic.unrouted,
                    limits: RouteLimits {
                        publish_timeout: limits.publish_timeout,
                        max_wait: limits.max_wait,
                    },
                    lane: Lane::new(),
                };
                set.routers.insert(topic.name.clone(), Arc::new(router));
            }
        }
        for channel in &spec.channels {
            let key = (channel.topic.clone(), channel.name.clone());
            if let Some(dead) = &channel.dead_letter_topic {
                set.dead_letters.insert(key.clone(), dead.clone());
            }
            let mut chain = Vec::new();
            for (i, plugin) in channel.plugins.iter().enumerate() {
                let at = format!("channel {}/{} plugins[{i}]", channel.topic, channel.name);
                chain.extend(builder.bind(&at, &channel.topic, Some(&channel.name), plugin));
            }
            if !chain.is_empty() {
                let gate = ChannelGate {
                    chain,
                    max_wait: host.limits().max_wait,
                    lane: Lane::new(),
                };
                set.gates.insert(key, Arc::new(gate));
            }
        }
        if !builder.problems.is_empty() {
            return Err(RulesError::Load {
                problems: builder.problems,
            });
        }
        set.spec = spec;
        Ok((set, builder.report))
    }

    pub fn spec(&self) -> &RulesSpec {
        &self.spec
    }

    /// Every binding: routers first, then each channel's chain in order.
    pub fn bindings(&self) -> impl Iterator<Item = &Bound> {
        let mut routers: Vec<_> = self.routers.values().collect();
        routers.sort_by(|a, b| a.bound.topic.cmp(&b.bound.topic));
        let mut gates: Vec<_> = self.gates.iter().collect();
        gates.sort_by(|a, b| a.0.cmp(b.0));
        routers
            .into_iter()
            .map(|r| &r.bound)
            .chain(gates.into_iter().flat_map(|(_, g)| &g.chain))
    }

    /// Creates every topic the rules list and every channel they declare, with its options.
    pub fn apply(&self, broker: &Broker) -> Result<(), RulesError> {
        let failed = |e: crate::broker::BrokerError| RulesError::Apply(e.to_string());
        for topic in &self.spec.topics {
            broker
                .create_topic(&Principal::internal(), &topic.name)
                .map_err(failed)?;
            let settings = crate::broker::TopicSettings {
                dedup_window: topic.dedup_window,
            };
            broker
                .configure_topic(&topic.name, settings)
                .map_err(|e| RulesError::Apply(format!("topic {}: {e}", topic.name)))?;
        }
        for channel in &self.spec.channels {
            let settings = ChannelSettings {
                max_attempts: channel.max_attempts,
                msg_timeout: channel.msg_timeout,
                ordering: channel.ordering,
            };
            broker
                .configure_channel(&channel.topic, &channel.name, settings)
                .map_err(|e| {
                    RulesError::Apply(format!("channel {}/{}: {e}", channel.topic, channel.name))
                })?;
        }
        Ok(())
    }
}

/// Binds plugins for one [`RuleSet::build`], collecting problems.
struct Builder<'a> {
    host: &'a PluginHost,
    /// The previous set's bindings not taken over yet.
    old: Vec<&'a Bound>,
    /// Each file loaded once per build, per kind.
    loaded: HashMap<(PathBuf, PluginKind), Arc<Plugin>>,
    problems: Vec<String>,
    report: BuildReport,
}

impl Builder<'_> {
    fn bind(
        &mut self,
        at: &str,
        topic: &TopicName,
        channel: Option<&ChannelName>,
        spec: &PluginSpec,
    ) -> Option<Bound> {
        let plugin = self.load(at, spec)?;
        if let Some(i) = self
            .old
            .iter()
            .position(|old| old.same_as(topic, channel, spec, &plugin))
        {
            let old = self.old.swap_remove(i);
            self.report.reused += 1;
            return Some(Bound {
                topic: topic.clone(),
                channel: channel.cloned(),
                spec: spec.clone(),
                binding: Arc::clone(&old.binding),
                invalid_answers: Arc::clone(&old.invalid_answers),
                publish_timeouts: Arc::clone(&old.publish_timeouts),
            });
        }
        match Binding::new(plugin, spec.params.clone()) {
            Ok(binding) => {
                self.report.started += 1;
                Some(Bound {
                    topic: topic.clone(),
                    channel: channel.cloned(),
                    spec: spec.clone(),
                    binding: Arc::new(binding),
                    invalid_answers: Arc::default(),
                    publish_timeouts: Arc::default(),
                })
            }
            Err(e) => {
                self.problems.push(format!("{at}: {e}"));
                None
            }
        }
    }

    fn load(&mut self, at: &str, spec: &PluginSpec) -> Option<Arc<Plugin>> {
        let key = (spec.path.clone(), spec.kind);
        if let Some(plugin) = self.loaded.get(&key) {
            return Some(Arc::clone(plugin));
        }
        match self.host.load(&spec.path, spec.kind) {
            Ok(plugin) => {
                self.loaded.insert(key, Arc::clone(&plugin));
                Some(plugin)
            }
            Err(e) => {
                self.problems.push(format!("{at}: {e}"));
                None
            }
        }
    }
}

/// The hooks the broker holds: the current [`RuleSet`], swapped whole on reload.
#[derive(Debug)]
pub struct Rules {
    current: ArcSwap<RuleSet>,
    /// Bumped by every swap, so that cached access decisions are made again.
    generation: AtomicU64,
}

impl Rules {
    pub fn new(set: RuleSet) -> Rules {
        Rules {
            current: ArcSwap::from_pointee(set),
            generation: AtomicU64::new(1),
        }
    }

    /// The set in force now.
    pub fn current(&self) -> Arc<RuleSet> {
        self.current.load_full()
    }

    /// Puts `set` in force for every later lookup.
    pub fn swap(&self, set: Arc<RuleSet>) {
        self.current.store(set);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// The grants of the set in force decide who may do what.
impl Access for Rules {
    fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn allows(&self, principal: &Principal, op: &Operation<'_>) -> bool {
        self.current.load().spec.acl.allows(principal, op)
    }
}

/// The access hook when authentication is configured without a rules file: no grants, so
/// only what an auth server grants with its answers is allowed.
#[derive(Debug, Default)]
pub struct NoGrants;

impl Access for NoGrants {
    fn generation(&self) -> u64 {
        0
    }

    fn allows(&self, _: &Principal, _: &Operation<'_>) -> bool {
        false
    }
}

impl Hooks for Rules {
    fn router(&self, topic: &TopicName) -> Option<Arc<dyn Router>> {
        let router = self.current.load().routers.get(topic).cloned()?;
        Some(router)
    }

    fn gate(&self, topic: &TopicName, channel: &ChannelName) -> Option<Arc<dyn Gate>> {
        let key = (topic.clone(), channel.clone());
        let gate = self.current.load().gates.get(&key).cloned()?;
        Some(gate)
    }

    fn dead_letter_topic(&self, topic: &TopicName, channel: &ChannelName) -> Option<TopicName> {
        let key = (topic.clone(), channel.clone());
        self.current.load().dead_letters.get(&key).cloned()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
#[path = "set_tests.rs"]
mod tests;
