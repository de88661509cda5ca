//! Which world of `wit/plugin.wit` a component targets, read from its type, and the check
//! that it is bound as that kind.
//!
//! The exports name the decision: `route` is the router world, `keep` and `keep-batch` the
//! filter and sampler worlds, whose exports are identical. What tells those two apart is
//! what the WIT allows each to import: only a sampler "may use the WASI clock and random
//! imports", so a component that imports `wasi:clocks/*` or `wasi:random/*` targets the
//! sampler world. Every world may import `wasi:cli` and `wasi:io`, which Rust `wasm32-wasip2`
//! guests import even as libraries (see `plugin::wasi`).
//!
//! A sampler that reads neither clock nor randomness (a counter, say) has a filter's type
//! exactly: nothing in the component says which it was built as, so it loads as either.
//!
//! # Invariants
//! - A component importing clocks or randomness never loads as a filter.
//! - A component exporting `route` alone never loads as a filter or sampler, nor one
//!   exporting `keep` or `keep-batch` alone as a router.
//! - A component whose exports fit no world is not judged here: the typed check of its
//!   exports (`Pre::new`) refuses it with the details.

use super::{PluginError, PluginKind};

/// Import namespaces only the sampler world may use.
const SAMPLER_ONLY: [&str; 2] = ["wasi:clocks/", "wasi:random/"];

/// What a component's type says it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Target {
    /// It exports `route`.
    Router,
    /// It exports `keep` or `keep-batch`, and imports nothing only a sampler may: it fits
    /// the filter world, and so the sampler world too.
    FilterOrSampler,
    /// It exports `keep` or `keep-batch` and imports `import`, which only a sampler may.
    Sampler { import: String },
    /// Its exports fit no world, or two.
    Unknown,
}

impl Target {
    /// Reads the target from the names of a component's exports and imports.
    pub(super) fn of<'a>(
        exports: impl IntoIterator<Item = &'a str>,
        imports: impl IntoIterator<Item = &'a str>,
    ) -> Target {
        let (mut route, mut keep) = (false, false);
        for name in exports {
            match name {
                "route" => route = true,
                "keep" | "keep-batch" => keep = true,
                _ => {}
            }
        }
        match (route, keep) {
            (true, false) => Target::Router,
            (false, true) => match imports.into_iter().find(|name| sampler_only(name)) {
                Some(import) => Target::Sampler {
                    import: import.to_owned(),
                },
                None => Target::FilterOrSampler,
            },
            _ => Target::Unknown,
        }
    }

    /// Refuses binding a component of this target as `kind`, naming both.
    pub(super) fn check(&self, plugin: &str, kind: PluginKind) -> Result<(), PluginError> {
        let mismatch = |targets: &'static str, why: String| PluginError::KindMismatch {
            plugin: plugin.to_owned(),
            targets,
            bound: kind,
            why,
        };
        match (self, kind) {
            (Target::Router, PluginKind::Filter | PluginKind::Sampler) => Err(mismatch(
                "router",
                "it exports `route`, not `keep` and `keep-batch`".into(),
            )),
            (Target::FilterOrSampler | Target::Sampler { .. }, PluginKind::Router) => {
                let targets = match self {
                    Target::Sampler { .. } => "sampler",
                    _ => "filter or sampler",
                };
                Err(mismatch(targets, "it exports `keep`, not `route`".into()))
            }
            (Target::Sampler { import }, PluginKind::Filter) => Err(mismatch(
                "sampler",
                format!("it imports {import}, which only the sampler world may use"),
            )),
            _ => Ok(()),
        }
    }
}

fn sampler_only(import: &str) -> bool {
    SAMPLER_ONLY.iter().any(|prefix| import.starts_with(prefix))
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUST_GUEST: [&str; 4] = [
        "quiver:plugin/types@0.1.0",
        "quiver:plugin/host@0.1.0",
        "wasi:cli/environment@0.2.6",
        "wasi:io/streams@0.2.6",
    ];
    const KEEP: [&str; 3] = ["init", "keep", "keep-batch"];

    fn with(extra: &'static str) -> Vec<&'static str> {
        RUST_GUEST.iter().copied().chain([extra]).collect()
    }

    #[test]
    fn exports_and_sampler_only_imports_name_the_world() {
        assert_eq!(Target::of(["init", "route"], RUST_GUEST), Target::Router);
        assert_eq!(Target::of(KEEP, RUST_GUEST), Target::FilterOrSampler);
        for import in [
            "wasi:clocks/monotonic-clock@0.2.6",
            "wasi:clocks/wall-clock@0.2.0",
            "wasi:random/random@0.2.6",
            "wasi:random/insecure-seed@0.2.6",
        ] {
            assert_eq!(
                Target::of(KEEP, with(import)),
                Target::Sampler {
                    import: import.to_owned()
                },
            );
        }
        assert_eq!(Target::of(["init"], RUST_GUEST), Target::Unknown);
        assert_eq!(
            Target::of(["init", "route", "keep"], RUST_GUEST),
            Target::Unknown
        );
    }

    #[test]
    fn a_mismatch_names_the_target_and_the_kind() {
        let sampler = Target::of(KEEP, with("wasi:clocks/monotonic-clock@0.2.6"));
        let err = sampler
            .check("tag-sampler", PluginKind::Filter)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "plugin tag-sampler targets the sampler world but is bound as a filter: it \
             imports wasi:clocks/monotonic-clock@0.2.6, which only the sampler world may use"
        );
        assert!(sampler.check("s", PluginKind::Sampler).is_ok());
        let err = sampler.check("s", PluginKind::Router).unwrap_err();
        assert!(
            err.to_string()
                .contains("targets the sampler world but is bound as a router"),
            "{err}"
        );

        let router = Target::Router;
        for kind in [PluginKind::Filter, PluginKind::Sampler] {
            let err = router.check("r", kind).unwrap_err().to_string();
            let expected = format!("targets the router world but is bound as a {kind}");
            assert!(err.contains(&expected), "{err}");
        }
        assert!(router.check("r", PluginKind::Router).is_ok());

        let either = Target::FilterOrSampler;
        assert!(either.check("f", PluginKind::Filter).is_ok());
        assert!(either.check("f", PluginKind::Sampler).is_ok());
        let err = either.check("f", PluginKind::Router).unwrap_err();
        assert!(
            err.to_string()
                .contains("targets the filter or sampler world but is bound as a router"),
            "{err}"
        );
        for kind in [PluginKind::Router, PluginKind::Filter, PluginKind::Sampler] {
            assert!(Target::Unknown.check("u", kind).is_ok());
        }
    }
}
