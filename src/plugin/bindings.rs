//! The generated bindings for `wit/plugin.wit` and the host side of its imports: the
//! `message` resource over the caller's [`MessageView`], `host.log` through `tracing`, and
//! the WASI interfaces that Rust `wasm32-wasip2` guests import.
//!
//! The three worlds share the `types` and `host` interfaces: the `router` bindings generate
//! them, and the `filter` and `sampler` bindings reuse them through `with`.

use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{HasSelf, Linker, Resource, ResourceTable};
use wasmtime::Store;
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};

use super::limits::{LogBudget, MemoryCap};
use super::MessageView;

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
pub(super) use types::Message;

/// The longest log line written; longer ones are cut.
const MAX_LOG_LINE: usize = 1024;

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

/// What a plugin's store holds: its message slot, limits, log budget and WASI state.
pub(super) struct HostState {
    plugin: Arc<str>,
    message: MessageSlot,
    pub(super) memory: MemoryCap,
    log: LogBudget,
    /// The last error-level line the guest logged during the current call: a panicking Rust
    /// guest logs its panic message there just before it traps.
    last_error: Option<String>,
    wasi: WasiCtx,
    table: ResourceTable,
}

impl HostState {
    pub(super) fn new(plugin: Arc<str>, memory_bytes: u64) -> Self {
        let wasi = WasiCtx::builder()
            .allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .build();
        HostState {
            plugin,
            message: MessageSlot(None),
            memory: MemoryCap::new(memory_bytes),
            log: LogBudget::new(Instant::now()),
            last_error: None,
            wasi,
            table: ResourceTable::new(),
        }
    }

    /// Clears what describes the previous call's fault.
    pub(super) fn start_call(&mut self) {
        self.memory.reset_denied();
        self.last_error = None;
    }

    pub(super) fn table(&mut self) -> &mut ResourceTable {
        &mut self.table
    }

    pub(super) fn last_error(&self) -> Option<&str> {
        self.last_error.as_deref()
    }

    #[allow(unsafe_code)]
    fn message(&self) -> wasmtime::Result<&MessageView<'_>> {
        match self.message.0 {
            // SAFETY: only `lend_message` sets the slot, from a reference that outlives the
            // call it wraps, and it clears the slot before it returns or unwinds. Host
            // functions run only inside such a call, on the thread that holds the store.
            Some(view) => Ok(unsafe { view.as_ref() }),
            None => wasmtime::bail!("message used outside the call it was passed to"),
        }
    }
}

impl Drop for HostState {
    fn drop(&mut self) {
        let dropped = self.log.dropped();
        if dropped > 0 {
            tracing::warn!(plugin = %self.plugin, dropped, "plugin log lines dropped by the rate limit");
        }
    }
}

/// The message of the call in progress, lent by [`lend_message`]; empty between calls.
struct MessageSlot(Option<NonNull<MessageView<'static>>>);

// SAFETY: the slot is empty whenever the store can move between threads: `lend_message`
// fills it only while it holds `&mut Store`, and the view it points to is `Sync` (shared
// references to strings, headers and bytes).
#[allow(unsafe_code)]
unsafe impl Send for MessageSlot {}

/// Runs `call` with `msg` readable by the guest through the `message` resource, then makes it
/// unreadable again, also if `call` panics.
pub(super) fn lend_message<R>(
    store: &mut Store<HostState>,
    msg: &MessageView<'_>,
    call: impl FnOnce(&mut Store<HostState>) -> R,
) -> R {
    struct Lent<'s>(&'s mut Store<HostState>);
    impl Drop for Lent<'_> {
        fn drop(&mut self) {
            self.0.data_mut().message.0 = None;
        }
    }
    store.data_mut().message.0 = Some(NonNull::from(msg).cast());
    let lent = Lent(store);
    call(&mut *lent.0)
}

/// The handle the guest gets for the lent message. The rep is unused: there is one message.
pub(super) fn message_handle() -> Resource<Message> {
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
    fn topic(&mut self, _: Resource<Message>) -> wasmtime::Result<String> {
        Ok(self.message()?.topic.to_owned())
    }

    fn id(&mut self, _: Resource<Message>) -> wasmtime::Result<String> {
        Ok(self.message()?.id.to_string())
    }

    fn timestamp_ns(&mut self, _: Resource<Message>) -> wasmtime::Result<u64> {
        Ok(self.message()?.timestamp_ns)
    }

    fn attempts(&mut self, _: Resource<Message>) -> wasmtime::Result<u16> {
        Ok(self.message()?.attempts)
    }

    fn header(&mut self, _: Resource<Message>, name: String) -> wasmtime::Result<Option<String>> {
        Ok(self.message()?.headers.get(&name).map(str::to_owned))
    }

    fn headers(&mut self, _: Resource<Message>) -> wasmtime::Result<Vec<(String, String)>> {
        let headers = self.message()?.headers.iter();
        Ok(headers.map(|(k, v)| (k.to_owned(), v.to_owned())).collect())
    }

    fn body(&mut self, _: Resource<Message>) -> wasmtime::Result<Vec<u8>> {
        let limit = self.memory.limit();
        let body = self.message()?.body;
        if body.len() as u64 > limit {
            return Err(BodyTooLarge {
                body: body.len(),
                limit,
            }
            .into());
        }
        Ok(body.to_vec())
    }

    fn body_len(&mut self, _: Resource<Message>) -> wasmtime::Result<u32> {
        // Bodies are capped at 1 MiB (`message::MAX_BODY_LEN`), far below `u32::MAX`.
        Ok(u32::try_from(self.message()?.body.len()).unwrap_or(u32::MAX))
    }

    fn drop(&mut self, _: Resource<Message>) -> wasmtime::Result<()> {
        // The guest only ever gets borrows, which it does not drop; nothing is owned here.
        Ok(())
    }
}

impl host::Host for HostState {
    fn log(&mut self, level: host::Level, message: String) {
        let line = truncate(&message, MAX_LOG_LINE);
        if level == host::Level::Error {
            self.last_error = Some(line.to_owned());
        }
        let Some(dropped) = self.log.take(Instant::now()) else {
            return;
        };
        let plugin = &*self.plugin;
        if dropped > 0 {
            tracing::warn!(
                plugin,
                dropped,
                "plugin log lines dropped by the rate limit"
            );
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
