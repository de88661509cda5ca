//! The example and hostile plugins of `plugins/`, built to wasm32-wasip2 once per test run.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

const TARGET: &str = "wasm32-wasip2";

/// The compiled component of guest crate `name` (e.g. `tag_filter`).
pub fn guest(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build) {
        Ok(dir) => dir.join(format!("{name}.wasm")),
        Err(why) => panic!("cannot build the guest plugins: {why}"),
    }
}

fn build() -> Result<PathBuf, String> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("plugins");
    let installed = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .map_err(|e| format!("cannot run rustup: {e}"))?;
    if !String::from_utf8_lossy(&installed.stdout)
        .lines()
        .any(|l| l.trim() == TARGET)
    {
        let status = Command::new("rustup")
            .args(["target", "add", TARGET])
            .status()
            .map_err(|e| format!("cannot run rustup: {e}"))?;
        if !status.success() {
            return Err(format!("rustup target add {TARGET} failed: {status}"));
        }
    }
    let output = Command::new(env!("CARGO"))
        .current_dir(&dir)
        .args(["build", "--release", "--target", TARGET, "--manifest-path"])
        .arg(dir.join("Cargo.toml"))
        .output()
        .map_err(|e| format!("cannot run cargo: {e}"))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("cargo build failed ({}):\n{stderr}", output.status));
    }
    Ok(dir.join("target").join(TARGET).join("release"))
}
