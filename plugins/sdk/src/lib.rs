//! Guest SDK for Quiver plugins: filters, samplers and routers written in plain Rust and built
//! as WebAssembly components for the `quiver:plugin@0.1.0` worlds (`wit/plugin.wit`).
//!
//! A plugin implements one trait and names its type in one macro:
//!
//! ```
//! use quiver_plugin::{Filter, Message, Params};
//!
//! struct OnlyType { wanted: String }
//!
//! impl Filter for OnlyType {
//!     fn init(params: Params) -> Result<Self, String> {
//!         params.expect_only(&["type"])?;
//!         Ok(OnlyType { wanted: params.required("type")?.to_owned() })
//!     }
//!     fn keep(&mut self, msg: &Message<'_>) -> bool {
//!         msg.header_eq("type", &self.wanted)
//!     }
//! }
//! quiver_plugin::filter!(OnlyType);
//! # fn main() {
//! # let mut f = OnlyType::init(Params::from([("type", "invoice")])).unwrap();
//! # assert!(f.keep(&Message::builder().header("type", "invoice").build()));
//! # }
//! ```
//!
//! The crate is `cdylib`, built with `--target wasm32-wasip2`; the result is a component.
//!
//! # Layout
//! - [`Message`]: the message a decision is about: the host's borrowed resource inside a
//!   plugin, or a local value built with [`Message::builder`] in host-side unit tests.
//! - [`Params`]: the binding's parameters from the rules file, with checks (`expect_only`,
//!   `required`, `parse`).
//! - [`Filter`], [`Sampler`], [`Router`] and [`Route`]: what a plugin implements.
//! - [`filter!`], [`sampler!`], [`router!`]: the export glue for one of the three worlds.
//! - [`names`]: channel and topic name lists in parameters, checked with the broker's rules.
//! - [`log`]: the broker's log (`host.log`).
//!
//! # Batches
//! The broker decides a channel's messages a batch at a time through the `keep-batch` export,
//! which the filter and sampler macros generate from `keep`: the plugin sees the batch's
//! messages one `keep` call after another, in order, as [`Message`]s.
//!
//! # Lifecycle
//! The broker instantiates the component, calls `init` once with the binding's parameters,
//! then one decision per message (`keep` or `route`) on the same instance, so `&mut self`
//! state (counters, token buckets) lives as long as the instance. The glue keeps the value
//! `init` returned in a per-instance slot. Calling `init` again replaces it. A decision
//! before a successful `init` traps, and so does a panic: a trap is reported to the broker,
//! which applies the binding's failure policy and instantiates the plugin afresh.
//!
//! # Why the bindings live here (wit-bindgen 0.61)
//! Each of the three worlds is generated once, in its own module of this crate, with
//! `pub_export_macro: true`. With that option wit-bindgen puts only the world's *imports*
//! in this crate's `component-type` custom section, and emits the section with the world's
//! *exports* from the export macro, i.e. in the plugin crate that invokes it. So linking this
//! crate never makes a filter claim the router's `route` export, even under fat LTO where
//! every crate's custom sections survive. The `types` and `host` interfaces are generated
//! once (in the filter module) and shared with the other two worlds through `with:`, so
//! there is one [`Message`] resource type for all three.
//!
//! The alternative, invoking `generate!` in each plugin crate, would need the plugin to know
//! the path to `wit/` (relative to its own manifest) and to depend on wit-bindgen itself.
//! Here a plugin depends only on this crate and never sees WIT.

mod export;
pub mod log;
mod message;
pub mod names;
mod params;
mod plugin;

pub use message::{Message, MessageBuilder};
pub use params::Params;
pub use plugin::{Filter, Route, Router, Sampler};

/// Generated bindings and glue used by the export macros. Not part of the API.
#[doc(hidden)]
pub mod __private {
    pub use crate::plugin::{decide, init};

    /// Bindings of the `filter` world. Owns the `types` and `host` interfaces.
    pub mod filter {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "filter",
            pub_export_macro: true,
            disable_custom_section_link_helpers: true,
            export_macro_name: "export_filter",
            default_bindings_module: "quiver_plugin::__private::filter",
        });
    }

    /// Bindings of the `sampler` world, sharing `types` and `host` with `filter`.
    pub mod sampler {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "sampler",
            pub_export_macro: true,
            disable_custom_section_link_helpers: true,
            export_macro_name: "export_sampler",
            default_bindings_module: "quiver_plugin::__private::sampler",
            with: {
                "quiver:plugin/types@0.1.0": crate::__private::types,
                "quiver:plugin/host@0.1.0": crate::__private::host,
            },
        });
    }

    /// Bindings of the `router` world, sharing `types` and `host` with `filter`.
    pub mod router {
        wit_bindgen::generate!({
            path: "../../wit",
            world: "router",
            pub_export_macro: true,
            disable_custom_section_link_helpers: true,
            export_macro_name: "export_router",
            default_bindings_module: "quiver_plugin::__private::router",
            with: {
                "quiver:plugin/types@0.1.0": crate::__private::types,
                "quiver:plugin/host@0.1.0": crate::__private::host,
            },
        });
    }

    pub use filter::quiver::plugin::{host, types};
}
