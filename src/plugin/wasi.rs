//! The WASI a plugin gets: wasmtime-wasi's preview 2 interfaces (Rust `wasm32-wasip2` guests
//! import `wasi:cli`, `wasi:io` and, for samplers, `wasi:clocks` even as libraries), in a
//! sandbox (see `HostState::new`: no files, sockets or environment; stdio discarded), with
//! every function that could wait replaced.
//!
//! Wasmtime-wasi's synchronous bindings wait by running a future on tokio (`in_tokio`): on
//! a thread of the broker's runtime that panics ("Cannot start a runtime from within a
//! runtime"), and anywhere it stalls past the call's deadline, which only interrupts guest
//! code. So:
//! - `wasi:io/poll` traps: `poll` and `pollable.block` (a guest `sleep`) would wait, and
//!   `pollable.ready` on a clock needs tokio's timer;
//! - `wasi:io/streams`' blocking methods and stream destructors run their future once: our
//!   streams (a sink, an empty stdin) are always ready, and one that would wait traps;
//! - creating a socket or resolving a name traps (the sandbox refuses them anyway, after
//!   `in_tokio`).
//!
//! # Invariants
//! - No WASI function a guest can call waits or enters tokio.
//! - Each replacement shadows a definition that exists: [`link`] fails if wasmtime-wasi stops
//!   defining one of these names (after an upgrade changes the interfaces' version), instead
//!   of adding a second interface beside the original.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use wasmtime::component::{Linker, LinkerInstance, Resource, ResourceTable, ResourceType};
use wasmtime::StoreContextMut;
use wasmtime_wasi::p2::bindings::io::streams::{
    Host as _, HostInputStream, HostOutputStream, StreamError as WitStreamError,
};
use wasmtime_wasi::p2::{DynInputStream, DynOutputStream, StreamResult};

use super::bindings::HostState;

/// The version of the WASI interfaces wasmtime-wasi defines. Guests importing an older 0.2.x
/// are linked to it by semver.
const VERSION: &str = "0.2.12";

const POLL: &str = "wasi:io/poll";
const STREAMS: &str = "wasi:io/streams";

/// Adds WASI to `linker`, with the replacements described in the module docs.
pub(super) fn link(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    wasmtime_wasi::p2::add_to_linker_sync(linker)?;
    for (interface, item) in [
        (POLL, "poll"),
        (POLL, "[method]pollable.block"),
        (POLL, "[method]pollable.ready"),
        ("wasi:sockets/tcp-create-socket", "create-tcp-socket"),
        ("wasi:sockets/udp-create-socket", "create-udp-socket"),
        ("wasi:sockets/ip-name-lookup", "resolve-addresses"),
    ] {
        replace(linker, interface, item, |mut instance, item| {
            let what = format!("{interface}#{item}");
            instance.func_new(item, move |_, _, _, _| {
                wasmtime::bail!("plugins may not block or use the network: {what} refused")
            })
        })?;
    }
    replace(linker, STREAMS, "output-stream", |mut streams, item| {
        streams.resource(item, ResourceType::host::<DynOutputStream>(), drop_output)
    })?;
    replace(linker, STREAMS, "input-stream", |mut streams, item| {
        streams.resource(item, ResourceType::host::<DynInputStream>(), drop_input)
    })?;
    for method in StreamMethod::ALL {
        replace(linker, STREAMS, method.name(), |streams, name| {
            define_stream_method(streams, name, method)
        })?;
    }
    Ok(())
}

/// Replaces `interface#item`, which must exist, with what `define` defines.
fn replace(
    linker: &mut Linker<HostState>,
    interface: &str,
    item: &str,
    define: impl FnOnce(LinkerInstance<'_, HostState>, &str) -> wasmtime::Result<()>,
) -> wasmtime::Result<()> {
    let name = format!("{interface}@{VERSION}");
    // Without shadowing, defining an existing name fails: that is the check.
    linker.allow_shadowing(false);
    if linker
        .instance(&name)?
        .func_new(item, |_, _, _, _| Ok(()))
        .is_ok()
    {
        wasmtime::bail!(
            "wasmtime-wasi no longer defines {name}#{item}: update plugin::wasi::VERSION"
        );
    }
    linker.allow_shadowing(true);
    let defined = define(linker.instance(&name)?, item);
    linker.allow_shadowing(false);
    defined
}

/// The blocking methods of `wasi:io/streams`.
#[derive(Debug, Clone, Copy)]
enum StreamMethod {
    WriteAndFlush,
    WriteZeroesAndFlush,
    Flush,
    Splice,
    Read,
    Skip,
}

impl StreamMethod {
    const ALL: [StreamMethod; 6] = [
        StreamMethod::WriteAndFlush,
        StreamMethod::WriteZeroesAndFlush,
        StreamMethod::Flush,
        StreamMethod::Splice,
        StreamMethod::Read,
        StreamMethod::Skip,
    ];

    fn name(self) -> &'static str {
        match self {
            StreamMethod::WriteAndFlush => "[method]output-stream.blocking-write-and-flush",
            StreamMethod::WriteZeroesAndFlush => {
                "[method]output-stream.blocking-write-zeroes-and-flush"
            }
            StreamMethod::Flush => "[method]output-stream.blocking-flush",
            StreamMethod::Splice => "[method]output-stream.blocking-splice",
            StreamMethod::Read => "[method]input-stream.blocking-read",
            StreamMethod::Skip => "[method]input-stream.blocking-skip",
        }
    }
}

type Out = Resource<DynOutputStream>;
type In = Resource<DynInputStream>;

fn define_stream_method(
    mut streams: LinkerInstance<'_, HostState>,
    name: &str,
    method: StreamMethod,
) -> wasmtime::Result<()> {
    match method {
        StreamMethod::WriteAndFlush => {
            streams.func_wrap(name, move |mut store, (stream, bytes): (Out, Vec<u8>)| {
                let table = table(&mut store);
                let result = at_once(method.name(), table.blocking_write_and_flush(stream, bytes))?;
                Ok((lower(table, result)?,))
            })
        }
        StreamMethod::WriteZeroesAndFlush => {
            streams.func_wrap(name, move |mut store, (stream, len): (Out, u64)| {
                let table = table(&mut store);
                let result = at_once(
                    method.name(),
                    table.blocking_write_zeroes_and_flush(stream, len),
                )?;
                Ok((lower(table, result)?,))
            })
        }
        StreamMethod::Flush => streams.func_wrap(name, move |mut store, (stream,): (Out,)| {
            let table = table(&mut store);
            let result = at_once(method.name(), table.blocking_flush(stream))?;
            Ok((lower(table, result)?,))
        }),
        StreamMethod::Splice => {
            streams.func_wrap(name, move |mut store, (dst, src, len): (Out, In, u64)| {
                let table = table(&mut store);
                let result = at_once(method.name(), table.blocking_splice(dst, src, len))?;
                Ok((lower(table, result)?,))
            })
        }
        StreamMethod::Read => {
            streams.func_wrap(name, move |mut store, (stream, len): (In, u64)| {
                let table = table(&mut store);
                let result = at_once(method.name(), table.blocking_read(stream, len))?;
                Ok((lower(table, result)?,))
            })
        }
        StreamMethod::Skip => {
            streams.func_wrap(name, move |mut store, (stream, len): (In, u64)| {
                let table = table(&mut store);
                let result = at_once(method.name(), table.blocking_skip(stream, len))?;
                Ok((lower(table, result)?,))
            })
        }
    }
}

fn drop_output(mut store: StoreContextMut<'_, HostState>, rep: u32) -> wasmtime::Result<()> {
    let table = table(&mut store);
    at_once(
        "output-stream drop",
        HostOutputStream::drop(table, Resource::new_own(rep)),
    )?
}

fn drop_input(mut store: StoreContextMut<'_, HostState>, rep: u32) -> wasmtime::Result<()> {
    let table = table(&mut store);
    at_once(
        "input-stream drop",
        HostInputStream::drop(table, Resource::new_own(rep)),
    )?
}

fn table<'s>(store: &'s mut StoreContextMut<'_, HostState>) -> &'s mut ResourceTable {
    store.data_mut().table()
}

/// The output of `future` if it is ready at once; a trap if it would wait.
fn at_once<F: Future>(what: &str, future: F) -> wasmtime::Result<F::Output> {
    let mut future = pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => Ok(output),
        Poll::Pending => wasmtime::bail!("plugins may not block: {what} would wait"),
    }
}

/// A stream result as the WIT `result<T, stream-error>`; a trap stays a trap.
fn lower<T>(
    table: &mut ResourceTable,
    result: StreamResult<T>,
) -> wasmtime::Result<Result<T, WitStreamError>> {
    match result {
        Ok(value) => Ok(Ok(value)),
        Err(err) => Ok(Err(table.convert_stream_error(err)?)),
    }
}
