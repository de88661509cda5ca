//! The export macros: one per world, each turning a type that implements the matching trait
//! into the component's `init` and decision exports.
//!
//! The glue is compiled only for `target_arch = "wasm32"`, so a plugin crate also builds and
//! runs its unit tests on the host, calling its trait methods directly.

/// Exports a [`Filter`](crate::Filter) as the component's `filter` world.
///
/// Use once per crate, at the top level: `quiver_plugin::filter!(MyFilter);`.
#[macro_export]
macro_rules! filter {
    ($plugin:ty) => {
        $crate::__keep_world!($plugin, Filter, filter, export_filter);
    };
}

/// Exports a [`Sampler`](crate::Sampler) as the component's `sampler` world.
///
/// Use once per crate, at the top level: `quiver_plugin::sampler!(MySampler);`.
#[macro_export]
macro_rules! sampler {
    ($plugin:ty) => {
        $crate::__keep_world!($plugin, Sampler, sampler, export_sampler);
    };
}

/// The glue shared by the two keep-or-skip worlds, which differ only in names.
#[doc(hidden)]
#[macro_export]
macro_rules! __keep_world {
    ($plugin:ty, $trait:ident, $world:ident, $export:ident) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            ::std::thread_local! {
                static PLUGIN: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct QuiverKeepExports;

            impl $crate::__private::$world::Guest for QuiverKeepExports {
                fn init(
                    params: $crate::__private::$world::Params,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::init(&PLUGIN, params, <$plugin as $crate::$trait>::init)
                }

                fn keep(msg: &$crate::__private::$world::Message) -> bool {
                    let msg = $crate::Message::from_host(msg);
                    $crate::__private::decide(&PLUGIN, |p| {
                        <$plugin as $crate::$trait>::keep(p, &msg)
                    })
                }

                fn keep_batch(batch: &$crate::__private::$world::Batch) -> ::std::vec::Vec<bool> {
                    $crate::__private::decide(&PLUGIN, |p| {
                        (0..batch.len())
                            .map(|index| {
                                let msg = $crate::Message::from_batch(batch, index);
                                <$plugin as $crate::$trait>::keep(p, &msg)
                            })
                            .collect()
                    })
                }
            }

            $crate::__private::$world::$export!(
                QuiverKeepExports with_types_in $crate::__private::$world
            );
        };

        // Outside WebAssembly there is nothing to export to. Naming the methods keeps the
        // plugin's code live, so host builds and unit tests have no dead-code warnings.
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = <$plugin as $crate::$trait>::init;
            let _ = <$plugin as $crate::$trait>::keep;
        };
    };
}

/// Exports a [`Router`](crate::Router) as the component's `router` world.
///
/// Use once per crate, at the top level: `quiver_plugin::router!(MyRouter);`.
#[macro_export]
macro_rules! router {
    ($plugin:ty) => {
        #[cfg(target_arch = "wasm32")]
        const _: () = {
            ::std::thread_local! {
                static PLUGIN: ::core::cell::RefCell<::core::option::Option<$plugin>> =
                    const { ::core::cell::RefCell::new(::core::option::Option::None) };
            }

            struct QuiverRouterExports;

            impl $crate::__private::router::Guest for QuiverRouterExports {
                fn init(
                    params: $crate::__private::router::Params,
                ) -> ::core::result::Result<(), ::std::string::String> {
                    $crate::__private::init(&PLUGIN, params, <$plugin as $crate::Router>::init)
                }

                fn route(
                    msg: &$crate::__private::router::Message,
                ) -> $crate::__private::router::Route {
                    let msg = $crate::Message::from_host(msg);
                    let route = $crate::__private::decide(&PLUGIN, |p| {
                        <$plugin as $crate::Router>::route(p, &msg)
                    });
                    $crate::__private::router::Route {
                        channels: route.channels,
                        forward: route.forward,
                    }
                }
            }

            $crate::__private::router::export_router!(
                QuiverRouterExports with_types_in $crate::__private::router
            );
        };

        // Outside WebAssembly there is nothing to export to. Naming the methods keeps the
        // plugin's code live, so host builds and unit tests have no dead-code warnings.
        #[cfg(not(target_arch = "wasm32"))]
        const _: () = {
            let _ = <$plugin as $crate::Router>::init;
            let _ = <$plugin as $crate::Router>::route;
        };
    };
}
