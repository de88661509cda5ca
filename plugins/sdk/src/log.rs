//! The broker's log, tagged with the plugin's binding.
//!
//! The broker rate-limits these lines: a plugin that logs on every message loses lines, not
//! throughput. Log on `init` and on the unusual, not per message. Outside WebAssembly (unit
//! tests on the host) lines go to stderr.
//!
//! ```
//! quiver_plugin::log::info(&format!("keeping 1 in {}", 10));
//! ```

/// How much a line matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Step by step detail.
    Trace,
    /// Detail for finding a problem.
    Debug,
    /// Normal events.
    Info,
    /// Something unusual the plugin recovered from.
    Warn,
    /// Something failed.
    Error,
}

/// Writes `message` at `level`.
pub fn log(level: Level, message: &str) {
    imp::log(level, message);
}

/// Writes at trace level.
pub fn trace(message: &str) {
    log(Level::Trace, message);
}

/// Writes at debug level.
pub fn debug(message: &str) {
    log(Level::Debug, message);
}

/// Writes at info level.
pub fn info(message: &str) {
    log(Level::Info, message);
}

/// Writes at warn level.
pub fn warn(message: &str) {
    log(Level::Warn, message);
}

/// Writes at error level.
pub fn error(message: &str) {
    log(Level::Error, message);
}

/// Makes a panic write its message to the broker's log (at error level) before it traps, so
/// the broker can say why a plugin trapped. Called by the `init` glue; idempotent.
pub(crate) fn report_panics_to_host() {
    imp::report_panics_to_host();
}

#[cfg(target_arch = "wasm32")]
mod imp {
    use super::Level;
    use crate::__private::host;
    use std::sync::Once;

    pub(super) fn log(level: Level, message: &str) {
        let level = match level {
            Level::Trace => host::Level::Trace,
            Level::Debug => host::Level::Debug,
            Level::Info => host::Level::Info,
            Level::Warn => host::Level::Warn,
            Level::Error => host::Level::Error,
        };
        host::log(level, message);
    }

    pub(super) fn report_panics_to_host() {
        static HOOK: Once = Once::new();
        HOOK.call_once(|| {
            std::panic::set_hook(Box::new(|info| {
                let message = info.payload_as_str().unwrap_or("(no message)");
                let line = match info.location() {
                    Some(at) => format!("plugin panicked at {at}: {message}"),
                    None => format!("plugin panicked: {message}"),
                };
                log(Level::Error, &line);
            }));
        });
    }
}

#[cfg(not(target_arch = "wasm32"))]
mod imp {
    use super::Level;

    pub(super) fn log(level: Level, message: &str) {
        eprintln!("[plugin {level:?}] {message}");
    }

    pub(super) fn report_panics_to_host() {}
}
