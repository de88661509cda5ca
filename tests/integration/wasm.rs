//! The example and hostile plugins of `plugins/`, built to wasm32-wasip2 once per test run
//! (installing the target with rustup if needed), as `quiver plugin build` does.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

/// The compiled component of guest crate `name` (e.g. `tag_filter`).
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<Vec<PathBuf>, String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let plugins = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins");
        quiver::authoring::build::build(&plugins).map_err(|e| e.to_string())
    });
    let built = built
        .as_ref()
        .unwrap_or_else(|why| panic!("cannot build the guest plugins: {why}"));
    quiver::authoring::build::component(built, name)
        .unwrap_or_else(|| panic!("{name} is not among the built plugins {built:?}"))
        .clone()
}
