//! The generated bindings for `wit/plugin.wit` and the host side of its imports: the
//! `message` resource over the caller's [`MessageView`], `host.log` through `tracing`
//! (rate-limited per plugin by [`log_limit`](crate::log_limit)), and the WASI interfaces
//! that Rust `wasm32-wasip2` guests import.
//!
//! The three worlds share the `types` and `host` interfaces: the `router` bindings generate
//! them, and the `filter` and `sampler` bindings reuse them through `with`.

use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};
use wasmtime::Store;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::limits::{CallBudget, CallClock, MemoryCap};
use super::MessageView;
use crate::log_limit::{self, Limit, Site};

pub(super) mod router {
    wasmtime::component::bindgen!({
        world: "router",
        path: "wit",
        // The message accessors trap when the message is used outside its call, and `body`
        // when the body cannot fit in the plugin's memory cap.
        imports: { "quiver:plugin/types": trappable },
    });
}

pub(super) mod filter {
    wasmtime::component::bindgen!({
        world: "filter",
        path: "wit",
        with: {
            "quiver:plugin/types": super::router::quiver::plugin::types,
            "quiver:plugin/host": super::router::quiver::plugin::host,
        },
    });
}

pub(super) mod sampler {
    wasmtime::component::bindgen!({
        world: "sampler",
        path: "wit",
        with: {
            "quiver:plugin/types": super::router::quiver::plugin::types,
            "quiver:plugin/host": super::router::quiver::plugin::host,
        },
    });
}

use router::quiver::plugin::{host, types};
pub(super) use types::{Batch, Message};

/// The longest log line written; longer ones are cut.
const MAX_LOG_LINE: usize = 1024;

/// A plugin's own log lines (`host.log`): 20 per 2 s per plugin, counted across its
/// instances, so that one restarted after every fault does not start over.
static GUEST_LOG: Site = Site::with_limit(
    "plugin log",
    Limit {
        lines: 20,
        interval: Duration::from_secs(2),
    },
);

/// Defines every import a plugin may use: `types`, `host`, and WASI.
///
/// WASI is sandboxed by [`HostState::new`]: no files, no sockets, no environment, stdout and
/// stderr discarded; and nothing a guest calls may wait or enter tokio (see `plugin::wasi`).
pub(super) fn linker(engine: &wasmtime::Engine) -> wasmtime::Result<Linker<HostState>> {
    let mut linker = Linker::new(engine);
    router::Router::add_to_linker::<HostState, HasSelf<HostState>>(&mut linker, |s| s)?;
    super::wasi::link(&mut linker)?;
    Ok(linker)
}

/// What a plugin's store holds: its message slot, limits and WASI state.
pub(super) struct HostState {
    plugin: Arc<str>,
    message: MessageSlot,
    pub(super) memory: MemoryCap,
    /// The current call's CPU budget and wall-clock backstop, checked at epoch deadlines.
    pub(super) clock: CallClock,
    /// The last error-level line the guest logged during the current call: a panicking Rust
    /// guest logs its panic message there just before it traps.
    last_error: Option<String>,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl HostState {
    pub(super) fn new(plugin: Arc<str>, memory_bytes: u64, budget: CallBudget) -> Self {
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        HostState {
            plugin,
            message: MessageSlot(None),
            memory: MemoryCap::new(memory_bytes),
            clock: CallClock::new(budget),
            last_error: None,
            wasi,
            table: ResourceTable::new(),
        }
    }

    /// Clears what describes the previous call's fault, and starts the call's clock under
    /// `budget`.
    pub(super) fn start_call(&mut self, budget: CallBudget) {
        self.clock.start(budget);
        self.memory.reset_denied();
        self.last_error = None;
    }

    pub(super) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    pub(super) fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    /// The lent messages: one for `keep` and `route`, several for `keep-batch`.
    #[allow(unsafe_code)]
    fn lent(&self) -> wasmtime::Result<&[MessageView<'_>]> {
        match self.message.0 {
            // SAFETY: only `lend_messages` sets the slot, from a slice that outlives the
            // call it wraps, and it clears the slot before it returns or unwinds. Host
            // functions run only inside such a call, on the thread that holds the store.
            Some(views) => Ok(unsafe { views.as_ref() }),
            None => wasmtime::bail!("message used outside the call it was passed to"),
        }
    }

    /// The message a `message` handle stands for: its rep is the index in the lent slice.
    fn message(&self, handle: &Resource<Message>) -> wasmtime::Result<&MessageView<'_>> {
        self.at(handle.rep())
    }

    /// The message at `index` of the lent batch; an index out of range traps.
    fn at(&self, index: u32) -> wasmtime::Result<&MessageView<'_>> {
        let lent = self.lent()?;
        match lent.get(index as usize) {
            Some(view) => Ok(view),
            None => wasmtime::bail!(
                "message index {index} is outside the batch of {}",
                lent.len()
            ),
        }
    }
}

/// The messages of the call in progress, lent by [`lend_messages`]; empty between calls.
struct MessageSlot(Option<NonNull<[MessageView<'static>]>>);

// SAFETY: the slot is empty whenever the store can move between threads: `lend_messages`
// fills it only while it holds `&mut Store`, and the view it points to is `Sync` (shared
// references to strings, headers and bytes).
#[allow(unsafe_code)]
unsafe impl Send for MessageSlot {}

/// Runs `call` with `msgs` readable by the guest, through the `message` resource (whose rep
/// is the index) or the `batch` resource, then makes them unreadable again, also if `call`
/// panics.
pub(super) fn lend_messages<R>(
    store: &mut Store<HostState>,
    msgs: &[MessageView<'_>],
    call: impl FnOnce(&mut Store<HostState>) -> R,
) -> R {
    struct Lent<'s>(&'s mut Store<HostState>);
    impl Drop for Lent<'_> {
        fn drop(&mut self) {
            self.0.data_mut().message.0 = None;
        }
    }
    let msgs: NonNull<[MessageView<'_>]> = NonNull::from(msgs);
    // Only the lifetime is erased; see `MessageSlot`.
    store.data_mut().message.0 = Some(NonNull::slice_from_raw_parts(
        msgs.cast::<MessageView<'static>>(),
        msgs.len(),
    ));
    let lent = Lent(store);
    call(&mut *lent.0)
}

/// The handle the guest gets for the lent message (the only one: index 0).
pub(super) fn message_handle() -> Resource<Message> {
    Resource::new_borrow(0)
}

/// The handle the guest gets for the lent batch. The rep is unused: there is one batch.
pub(super) fn batch_handle() -> Resource<Batch> {
    Resource::new_borrow(0)
}

/// The body could not fit in the plugin's memory: raised by `body()` before copying.
#[derive(Debug, thiserror::Error)]
#[error("body of {body} bytes exceeds the {limit}-byte memory cap")]
pub(super) struct BodyTooLarge {
    pub(super) body: usize,
    pub(super) limit: u64,
}

impl types::Host for HostState {}

impl types::HostMessage for HostState {
    fn topic(&mut self, m: Resource<Message>) -> wasmtime::Result<String> {
        Ok(self.message(&m)?.topic.to_owned())
    }

    fn id(&mut self, m: Resource<Message>) -> wasmtime::Result<String> {
        Ok(self.message(&m)?.id.to_string())
    }

    fn timestamp_ns(&mut self, m: Resource<Message>) -> wasmtime::Result<u64> {
        Ok(self.message(&m)?.timestamp_ns)
    }

    fn attempts(&mut self, m: Resource<Message>) -> wasmtime::Result<u16> {
        Ok(self.message(&m)?.attempts)
    }

    fn header(&mut self, m: Resource<Message>, name: String) -> wasmtime::Result<Option<String>> {
        Ok(header(self.message(&m)?, &name))
    }

    fn has_header(&mut self, m: Resource<Message>, name: String) -> wasmtime::Result<bool> {
        Ok(self.message(&m)?.headers.get(&name).is_some())
    }

    fn header_eq(
        &mut self,
        m: Resource<Message>,
        name: String,
        value: String,
    ) -> wasmtime::Result<bool> {
        Ok(self.message(&m)?.headers.get(&name) == Some(value.as_str()))
    }

    fn header_index(
        &mut self,
        m: Resource<Message>,
        name: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Option<u32>> {
        Ok(header_index(self.message(&m)?, &name, &values))
    }

    fn headers(&mut self, m: Resource<Message>) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(headers(self.message(&m)?))
    }

    fn body(&mut self, m: Resource<Message>) -> wasmtime::Result<Vec<u8>> {
        body(self.message(&m)?, self.memory.limit())
    }

    fn body_len(&mut self, m: Resource<Message>) -> wasmtime::Result<u32> {
        Ok(body_len(self.message(&m)?))
    }

    fn drop(&mut self, _: Resource<Message>) -> wasmtime::Result<()> {
        // The guest only ever gets borrows, which it does not drop; nothing is owned here.
        Ok(())
    }
}

impl types::HostBatch for HostState {
    fn len(&mut self, _: Resource<Batch>) -> wasmtime::Result<u32> {
        // A batch is at most `MAX_BATCH` long.
        Ok(u32::try_from(self.lent()?.len()).unwrap_or(u32::MAX))
    }

    fn topic(&mut self, _: Resource<Batch>, i: u32) -> wasmtime::Result<String> {
        Ok(self.at(i)?.topic.to_owned())
    }

    fn id(&mut self, _: Resource<Batch>, i: u32) -> wasmtime::Result<String> {
        Ok(self.at(i)?.id.to_string())
    }

    fn timestamp_ns(&mut self, _: Resource<Batch>, i: u32) -> wasmtime::Result<u64> {
        Ok(self.at(i)?.timestamp_ns)
    }

    fn attempts(&mut self, _: Resource<Batch>, i: u32) -> wasmtime::Result<u16> {
        Ok(self.at(i)?.attempts)
    }

    fn header(
        &mut self,
        _: Resource<Batch>,
        i: u32,
        name: String,
    ) -> wasmtime::Result<Option<String>> {
        Ok(header(self.at(i)?, &name))
    }

    fn has_header(&mut self, _: Resource<Batch>, i: u32, name: String) -> wasmtime::Result<bool> {
        Ok(self.at(i)?.headers.get(&name).is_some())
    }

    fn header_eq(
        &mut self,
        _: Resource<Batch>,
        i: u32,
        name: String,
        value: String,
    ) -> wasmtime::Result<bool> {
        Ok(self.at(i)?.headers.get(&name) == Some(value.as_str()))
    }

    fn header_index(
        &mut self,
        _: Resource<Batch>,
        i: u32,
        name: String,
        values: Vec<String>,
    ) -> wasmtime::Result<Option<u32>> {
        Ok(header_index(self.at(i)?, &name, &values))
    }

    fn headers(&mut self, _: Resource<Batch>, i: u32) -> wasmtime::Result<Vec<(String, String)>> {
        Ok(headers(self.at(i)?))
    }

    fn body(&mut self, _: Resource<Batch>, i: u32) -> wasmtime::Result<Vec<u8>> {
        body(self.at(i)?, self.memory.limit())
    }

    fn body_len(&mut self, _: Resource<Batch>, i: u32) -> wasmtime::Result<u32> {
        Ok(body_len(self.at(i)?))
    }

    fn drop(&mut self, _: Resource<Batch>) -> wasmtime::Result<()> {
        // Only borrowed, like messages.
        Ok(())
    }
}

fn header(msg: &MessageView<'_>, name: &str) -> Option<String> {
    msg.headers.get(name).map(str::to_owned)
}

fn header_index(msg: &MessageView<'_>, name: &str, values: &[String]) -> Option<u32> {
    let found = msg.headers.get(name)?;
    let index = values.iter().position(|v| v == found)?;
    // `values` came through the guest's capped memory, so its length fits in a u32.
    u32::try_from(index).ok()
}

fn headers(msg: &MessageView<'_>) -> Vec<(String, String)> {
    let headers = msg.headers.iter();
    headers.map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// The body, refused before copying when it cannot fit in the plugin's memory cap.
fn body(msg: &MessageView<'_>, limit: u64) -> wasmtime::Result<Vec<u8>> {
    if msg.body.len() as u64 > limit {
        return Err(BodyTooLarge {
            body: msg.body.len(),
            limit,
        }
        .into());
    }
    Ok(msg.body.to_vec())
}

fn body_len(msg: &MessageView<'_>) -> u32 {
    // Bodies are capped at 1 MiB (`message::MAX_BODY_LEN`), far below `u32::MAX`.
    u32::try_from(msg.body.len()).unwrap_or(u32::MAX)
}

impl host::Host for HostState {
    fn log(&mut self, level: host::Level, message: String) {
        let line = truncate(&message, MAX_LOG_LINE);
        if level == host::Level::Error {
            self.last_error = Some(line.to_owned());
        }
        let plugin = &*self.plugin;
        if !log_limit::allow(&GUEST_LOG, &[("plugin", plugin)]) {
            return;
        }
        match level {
            host::Level::Trace => tracing::trace!(plugin, "{line}"),
            host::Level::Debug => tracing::debug!(plugin, "{line}"),
            host::Level::Info => tracing::info!(plugin, "{line}"),
            host::Level::Warn => tracing::warn!(plugin, "{line}"),
            host::Level::Error => tracing::error!(plugin, "{line}"),
        }
    }
}

/// The longest prefix of `text` of at most `max` bytes that ends on a character boundary.
fn truncate(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let end = (0..=max)
        .rev()
        .find(|&i| text.is_char_boundary(i))
        .unwrap_or(0);
    &text[..end]
}

impl WasiView for HostState {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncate_keeps_whole_characters() {
        assert_eq!(truncate("abc", 5), "abc");
        assert_eq!(truncate("abcdef", 3), "abc");
        assert_eq!(truncate("aé", 2), "a", "é is two bytes");
    }
}
