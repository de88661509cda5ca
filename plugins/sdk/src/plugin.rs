//! What a plugin implements, and the per-instance slot the export glue keeps it in.
//!
//! # Invariants
//! - The slot holds a value exactly when the last `init` succeeded; a failed `init` empties
//!   it, so a later decision traps instead of using stale state.
//! - A decision borrows the slot mutably for the whole call. Re-entry cannot happen (the host
//!   never calls a plugin from inside its own host calls); if it did, the borrow would trap.

use std::cell::RefCell;
use std::thread::LocalKey;

use crate::{Message, Params};

/// Bound to a channel: keep the message for this channel, or skip it.
///
/// `keep` should be a pure function of the message and the parameters; for decisions that
/// depend on time, counts or randomness, implement [`Sampler`].
pub trait Filter: Sized + 'static {
    /// Checks the parameters; an error refuses the binding with this message.
    fn init(params: Params) -> Result<Self, String>;
    /// Whether this channel gets the message.
    fn keep(&mut self, msg: &Message<'_>) -> bool;
}

/// Bound to a channel: like a [`Filter`], but stateful (rates, 1-in-N, per key). It may read
/// the clock (`std::time::Instant`) and randomness.
pub trait Sampler: Sized + 'static {
    /// Checks the parameters; an error refuses the binding with this message.
    fn init(params: Params) -> Result<Self, String>;
    /// Whether this channel gets the message.
    fn keep(&mut self, msg: &Message<'_>) -> bool;
}

/// Bound to a topic: chooses the channels that get a message, and other topics to copy it to.
pub trait Router: Sized + 'static {
    /// Checks the parameters; an error refuses the binding with this message.
    fn init(params: Params) -> Result<Self, String>;
    /// Where the message goes.
    fn route(&mut self, msg: &Message<'_>) -> Route;
}

/// A router's decision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Route {
    /// Channels of this topic that get the message. Empty (with no forwards) means unrouted:
    /// the binding's `unrouted` policy applies.
    pub channels: Vec<String>,
    /// Other topics that get a copy, routed by their own rules.
    pub forward: Vec<String>,
}

impl Route {
    /// No channel and no forward: the binding's `unrouted` policy applies.
    pub fn unrouted() -> Self {
        Route::default()
    }

    /// These channels, no forwards.
    pub fn to<I, S>(channels: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Route {
            channels: channels.into_iter().map(Into::into).collect(),
            forward: Vec::new(),
        }
    }

    /// Whether the route names no channel and no forward.
    pub fn is_unrouted(&self) -> bool {
        self.channels.is_empty() && self.forward.is_empty()
    }
}

/// The per-instance slot of a plugin value. A component instance is single-threaded, so a
/// thread-local is one static with no locking.
pub type Slot<T> = LocalKey<RefCell<Option<T>>>;

/// `init` glue: builds the plugin from the host's parameters and keeps it in `slot`.
#[doc(hidden)]
pub fn init<T: 'static>(
    slot: &'static Slot<T>,
    params: Vec<(String, String)>,
    make: fn(Params) -> Result<T, String>,
) -> Result<(), String> {
    crate::log::report_panics_to_host();
    slot.with(|s| s.borrow_mut().take());
    let plugin = make(Params::new(params))?;
    slot.with(|s| *s.borrow_mut() = Some(plugin));
    Ok(())
}

/// Decision glue: runs `decide` on the plugin in `slot`.
///
/// # Panics
/// If `init` has not succeeded on this instance. The panic traps, and the broker's failure
/// policy applies: the host must not ask for decisions from a refused binding.
#[doc(hidden)]
pub fn decide<T: 'static, R>(slot: &'static Slot<T>, decide: impl FnOnce(&mut T) -> R) -> R {
    slot.with(|s| {
        let mut s = s.borrow_mut();
        let Some(plugin) = s.as_mut() else {
            panic!("quiver plugin: decision asked before a successful init");
        };
        decide(plugin)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(u32);

    thread_local! {
        static SLOT: RefCell<Option<Counter>> = const { RefCell::new(None) };
    }

    fn make(params: Params) -> Result<Counter, String> {
        params.expect_only(&["start"])?;
        Ok(Counter(params.parse_or("start", 0)?))
    }

    #[test]
    fn state_persists_between_decisions_and_failed_init_empties_the_slot() {
        assert_eq!(
            init(&SLOT, vec![("start".into(), "5".into())], make),
            Ok(())
        );
        let first = decide(&SLOT, |c| {
            c.0 += 1;
            c.0
        });
        assert_eq!(first, 6);
        assert_eq!(decide(&SLOT, |c| c.0), 6);
        assert!(init(&SLOT, vec![("bogus".into(), "1".into())], make).is_err());
        assert!(SLOT.with(|s| s.borrow().is_none()));
    }

    #[test]
    fn route_helpers() {
        assert!(Route::unrouted().is_unrouted());
        let r = Route::to(["a", "b"]);
        assert_eq!(r.channels, vec!["a".to_owned(), "b".to_owned()]);
        assert!(!r.is_unrouted());
    }
}
