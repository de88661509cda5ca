//! Tests against real plugin components, built from the `plugins/` workspace once per test
//! run (see [`guest`]).

mod binding;
mod cache;
mod decide;
mod hostile;
#[cfg(target_os = "linux")]
mod preemption;
mod world;

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use crate::message::{Headers, MessageId};
use crate::plugin::{MessageView, Plugin, PluginHost, PluginKind, PluginLimits};

/// The `plugins/` workspace at the repository root.
fn plugins_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins")
}

/// The compiled component of guest crate `name` (e.g. `tag_filter`), building every guest
/// the first time any test asks.
pub(crate) fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<Vec<PathBuf>, String>> = OnceLock::new();
    let built = BUILT
        .get_or_init(|| crate::authoring::build::build(&plugins_dir()).map_err(|e| e.to_string()));
    let built = built
        .as_ref()
        .unwrap_or_else(|why| panic!("cannot build the guest plugins: {why}"));
    crate::authoring::build::component(built, name)
        .unwrap_or_else(|| panic!("{name} is not among the built plugins {built:?}"))
        .clone()
}

/// A host with the default limits and no cache.
pub(super) fn host() -> PluginHost {
    PluginHost::new(PluginLimits::default(), None).unwrap()
}

pub(super) fn load(host: &PluginHost, name: &str, kind: PluginKind) -> Arc<Plugin> {
    host.load(&guest(name), kind)
        .unwrap_or_else(|e| panic!("loading {name}: {e}"))
}

pub(super) fn params(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A message's parts, owned, to lend as a [`MessageView`].
pub(super) struct TestMessage {
    pub topic: String,
    pub headers: Headers,
    pub body: Vec<u8>,
    pub offset: u64,
}

impl TestMessage {
    pub fn new(body: &[u8]) -> Self {
        TestMessage {
            topic: "orders".to_owned(),
            headers: Headers::new(),
            body: body.to_vec(),
            offset: 1,
        }
    }

    pub fn header(mut self, key: &str, value: &str) -> Self {
        self.headers.push(key, value);
        self
    }

    pub fn view(&self) -> MessageView<'_> {
        MessageView {
            topic: &self.topic,
            id: MessageId::new(7, self.offset),
            timestamp_ns: 1_700_000_000_000_000_000,
            attempts: 1,
            headers: &self.headers,
            body: &self.body,
        }
    }
}

#[test]
fn plugin_kind_round_trips_through_its_name() {
    for kind in [PluginKind::Router, PluginKind::Filter, PluginKind::Sampler] {
        assert_eq!(kind.to_string().parse::<PluginKind>(), Ok(kind));
    }
    let err = "mapper".parse::<PluginKind>().unwrap_err();
    assert!(err.to_string().contains("mapper"), "{err}");
}
