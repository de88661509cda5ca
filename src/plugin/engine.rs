//! The engine side: one wasmtime [`Engine`] with epoch interruption, the linker with every
//! import a plugin may use, the epoch ticker, and loading (compiling or fetching from the
//! cache, then checking the world) of [`Plugin`]s.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use wasmtime::component::{Component, InstancePre, Linker};
use wasmtime::{Config, Engine};

use super::bindings::HostState;
use super::bindings::{filter::FilterPre, linker, router::RouterPre, sampler::SamplerPre};
use super::cache::{hex, sha256, CompileCache};
use super::error::detail;
use super::limits::EpochTicker;
use super::world::Target;
use super::{Instance, PluginError, PluginKind, PluginLimits};

/// Loads and instantiates plugins. One per broker: it owns the compiler, the epoch ticker
/// thread and the compile cache. Plugins and instances keep what they need of it alive, so it
/// may be dropped before them; the ticker stops with the last of them.
pub struct PluginHost {
    shared: Arc<Shared>,
}

/// What every plugin and instance of one host shares.
pub(super) struct Shared {
    pub(super) engine: Engine,
    linker: Linker<HostState>,
    pub(super) limits: PluginLimits,
    cache: Option<CompileCache>,
    _ticker: EpochTicker,
}

impl PluginHost {
    /// Starts the engine and the epoch ticker. With `cache_dir`, compiles are kept there
    /// (the directory is created if needed).
    pub fn new(
        limits: PluginLimits,
        cache_dir: Option<PathBuf>,
    ) -> Result<PluginHost, PluginError> {
        let engine_error = |detail| PluginError::Engine { detail };
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.wasm_component_model(true);
        let engine = Engine::new(&config).map_err(|e| engine_error(detail(&e)))?;
        let linker = linker(&engine).map_err(|e| engine_error(detail(&e)))?;
        let cache = match cache_dir {
            Some(dir) => Some(CompileCache::open(dir, &engine)?),
            None => None,
        };
        let ticker = EpochTicker::start(engine.clone())
            .map_err(|e| engine_error(format!("cannot start the epoch thread: {e}")))?;
        let shared = Shared {
            engine,
            linker,
            limits,
            cache,
            _ticker: ticker,
        };
        Ok(PluginHost {
            shared: Arc::new(shared),
        })
    }

    pub fn limits(&self) -> &PluginLimits {
        &self.shared.limits
    }

    /// Reads, compiles (or loads the cached compile of) the component at `path`, and checks
    /// that it targets `kind`'s world: first by its type (a sampler's imports bound as a
    /// filter, a router bound as either, are [`PluginError::KindMismatch`]; see
    /// `plugin::world`), then its exports' signatures against the world
    /// ([`PluginError::WrongWorld`]). The plugin is named after the file's stem.
    pub fn load(&self, path: &Path, kind: PluginKind) -> Result<Arc<Plugin>, PluginError> {
        let bytes = std::fs::read(path).map_err(|source| PluginError::Read {
            path: path.to_owned(),
            source,
        })?;
        let name = path.file_stem().map_or_else(
            || path.display().to_string(),
            |s| s.to_string_lossy().into_owned(),
        );
        self.load_bytes(&name, &bytes, kind)
    }

    /// Same as [`load`](Self::load), from bytes already in memory.
    pub fn load_bytes(
        &self,
        name: &str,
        bytes: &[u8],
        kind: PluginKind,
    ) -> Result<Arc<Plugin>, PluginError> {
        check_header(name, bytes)?;
        let hash = sha256(bytes);
        let component = self.compile(name, bytes, &hash)?;
        self.target(&component).check(name, kind)?;
        let wrong_world = |detail| PluginError::WrongWorld {
            plugin: name.to_owned(),
            expected: kind,
            detail,
        };
        let pre = self
            .shared
            .linker
            .instantiate_pre(&component)
            .map_err(|e| wrong_world(detail(&e)))?;
        let pre = Pre::new(kind, pre.clone()).map_err(|e| {
            let looks_like = [PluginKind::Router, PluginKind::Filter]
                .into_iter()
                .find(|&other| other != kind && Pre::new(other, pre.clone()).is_ok());
            wrong_world(match looks_like {
                Some(other) => format!("{}; it looks like a {other}", detail(&e)),
                None => detail(&e),
            })
        })?;
        Ok(Arc::new(Plugin {
            name: name.into(),
            kind,
            hash: hex(&hash),
            pre,
            shared: Arc::clone(&self.shared),
        }))
    }

    /// A new instance of `plugin` in its own store with the host's limits, after its `init`
    /// accepted `params`. Instantiation and `init` run under `init_timeout`.
    ///
    /// `init` returning an error gives [`PluginError::Init`] with the plugin's message; a
    /// fault while starting gives [`PluginError::InitFault`].
    pub fn instantiate(
        &self,
        plugin: &Arc<Plugin>,
        params: &[(String, String)],
    ) -> Result<Instance, PluginError> {
        Instance::start(plugin, params)
    }

    /// The world `component` targets, from the names of its exports and imports.
    fn target(&self, component: &Component) -> Target {
        let engine = &self.shared.engine;
        let ty = component.component_type();
        Target::of(
            ty.exports(engine).map(|(name, _)| name),
            ty.imports(engine).map(|(name, _)| name),
        )
    }

    fn compile(&self, name: &str, bytes: &[u8], hash: &[u8]) -> Result<Component, PluginError> {
        let engine = &self.shared.engine;
        let cached = self.shared.cache.as_ref().map(|c| (c, c.path_for(hash)));
        if let Some((cache, path)) = &cached {
            if let Some(component) = cache.load(engine, path) {
                tracing::debug!(plugin = name, "plugin compile loaded from the cache");
                return Ok(component);
            }
        }
        let started = Instant::now();
        let component = Component::new(engine, bytes).map_err(|e| PluginError::Compile {
            plugin: name.to_owned(),
            detail: detail(&e),
        })?;
        tracing::debug!(plugin = name, elapsed = ?started.elapsed(), "plugin compiled");
        if let Some((cache, path)) = &cached {
            cache.store(&component, path);
        }
        Ok(component)
    }
}

impl fmt::Debug for PluginHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PluginHost")
            .field("limits", &self.shared.limits)
            .field("cache", &self.shared.cache)
            .finish_non_exhaustive()
    }
}

/// Refuses what is not a WebAssembly component before the compiler sees it, with a message
/// that says what the file is instead.
fn check_header(name: &str, bytes: &[u8]) -> Result<(), PluginError> {
    const MAGIC: &[u8] = b"\0asm";
    const CORE_MODULE: &[u8] = &[1, 0, 0, 0];
    let not_wasm = |detail: &str| PluginError::NotWasm {
        plugin: name.to_owned(),
        detail: detail.to_owned(),
    };
    if !bytes.starts_with(MAGIC) {
        return Err(not_wasm(
            "it does not start with the WebAssembly magic bytes",
        ));
    }
    if bytes.get(4..8) == Some(CORE_MODULE) {
        return Err(not_wasm(
            "it is a core WebAssembly module; build plugins as components (--target wasm32-wasip2)",
        ));
    }
    Ok(())
}

/// One compiled component, checked against its world and linked against the host's
/// imports, ready to instantiate.
pub struct Plugin {
    name: Arc<str>,
    kind: PluginKind,
    hash: String,
    pub(super) pre: Pre,
    pub(super) shared: Arc<Shared>,
}

/// The pre-linked component, typed by its world.
pub(super) enum Pre {
    Router(RouterPre<HostState>),
    Filter(FilterPre<HostState>),
    Sampler(SamplerPre<HostState>),
}

impl Pre {
    /// Checks that `pre`'s component exports `kind`'s world.
    fn new(kind: PluginKind, pre: InstancePre<HostState>) -> wasmtime::Result<Pre> {
        Ok(match kind {
            PluginKind::Router => Pre::Router(RouterPre::new(pre)?),
            PluginKind::Filter => Pre::Filter(FilterPre::new(pre)?),
            PluginKind::Sampler => Pre::Sampler(SamplerPre::new(pre)?),
        })
    }
}

impl Plugin {
    /// The name it was loaded under: the file's stem, or the name given to `load_bytes`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub(super) fn name_arc(&self) -> Arc<str> {
        Arc::clone(&self.name)
    }

    pub fn kind(&self) -> PluginKind {
        self.kind
    }

    /// SHA-256 of the component's bytes, in lowercase hex: tells two versions apart.
    pub fn hash(&self) -> &str {
        &self.hash
    }
}

impl fmt::Debug for Plugin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Plugin")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("hash", &self.hash)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_core_modules_are_not_components() {
        let err = check_header("notes", b"hello").unwrap_err();
        assert!(matches!(err, PluginError::NotWasm { .. }), "{err}");
        let core = b"\0asm\x01\0\0\0";
        let err = check_header("core", core).unwrap_err();
        assert!(err.to_string().contains("core WebAssembly module"), "{err}");
        assert!(check_header("c", b"\0asm\x0d\0\x01\0").is_ok());
    }
}
