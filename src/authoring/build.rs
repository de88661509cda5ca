//! `quiver plugin build`: `cargo build --release --target wasm32-wasip2` in a plugin crate,
//! then the paths of the components it made.
//!
//! Cargo runs in the crate's directory, so its `.cargo/config.toml` applies; its output goes
//! to stderr as it comes, leaving stdout for the paths (`quiver plugin test $(quiver plugin
//! build) ...`). The component of a `cdylib` target `my-filter` is
//! `<target dir>/wasm32-wasip2/release/my_filter.wasm`, with the target directory from
//! `cargo metadata` (so `CARGO_TARGET_DIR` and workspaces are honoured).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde::Deserialize;

use super::AuthoringError;

/// The target plugins are built for.
pub const TARGET: &str = "wasm32-wasip2";

/// Builds the crate (or workspace) in `dir` and returns its components.
pub fn build(dir: &Path) -> Result<Vec<PathBuf>, AuthoringError> {
    ensure_target()?;
    let mut cargo = Command::new(cargo_program());
    cargo
        .args(["build", "--release", "--target", TARGET])
        .current_dir(dir)
        .stdout(Stdio::from(std::io::stderr()));
    let command = format!(
        "cargo build --release --target {TARGET} (in {})",
        dir.display()
    );
    let status = cargo.status().map_err(|source| AuthoringError::Spawn {
        command: command.clone(),
        source,
    })?;
    if !status.success() {
        return Err(AuthoringError::Tool {
            command,
            status,
            output: String::new(),
        });
    }
    let components = components(&metadata(dir)?, dir);
    if components.is_empty() {
        return Err(AuthoringError::NoComponent {
            dir: dir.to_owned(),
        });
    }
    Ok(components)
}

/// The component built from crate `name` (e.g. `tag_filter`) among `components`.
pub fn component<'a>(components: &'a [PathBuf], name: &str) -> Option<&'a PathBuf> {
    let file = format!("{name}.wasm");
    components
        .iter()
        .find(|p| p.file_name().is_some_and(|f| f == file.as_str()))
}

/// Installs the wasm target when rustup lacks it. Without rustup (a toolchain installed some
/// other way) cargo itself reports a missing target.
pub fn ensure_target() -> Result<(), AuthoringError> {
    let Ok(installed) = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
    else {
        return Ok(());
    };
    let listed = String::from_utf8_lossy(&installed.stdout);
    if !installed.status.success() || listed.lines().any(|l| l.trim() == TARGET) {
        return Ok(());
    }
    let command = format!("rustup target add {TARGET}");
    let output = Command::new("rustup")
        .args(["target", "add", TARGET])
        .output()
        .map_err(|source| AuthoringError::Spawn {
            command: command.clone(),
            source,
        })?;
    if output.status.success() {
        return Ok(());
    }
    Err(AuthoringError::Tool {
        command,
        status: output.status,
        output: format!(":\n{}", String::from_utf8_lossy(&output.stderr)),
    })
}

/// Cargo as the environment names it (`CARGO` when run by cargo), else `cargo` on the path.
fn cargo_program() -> OsString {
    std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into())
}

/// What `cargo metadata --format-version 1 --no-deps` says that the build needs.
#[derive(Debug, Deserialize)]
struct Metadata {
    target_directory: PathBuf,
    /// With `--no-deps`: the workspace's members.
    packages: Vec<Package>,
}

#[derive(Debug, Deserialize)]
struct Package {
    manifest_path: PathBuf,
    targets: Vec<Target>,
}

#[derive(Debug, Deserialize)]
struct Target {
    name: String,
    crate_types: Vec<String>,
}

fn metadata(dir: &Path) -> Result<Metadata, AuthoringError> {
    let command = "cargo metadata --format-version 1 --no-deps".to_owned();
    let output = Command::new(cargo_program())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(dir)
        .output()
        .map_err(|source| AuthoringError::Spawn {
            command: command.clone(),
            source,
        })?;
    if !output.status.success() {
        return Err(AuthoringError::Tool {
            command,
            status: output.status,
            output: format!(":\n{}", String::from_utf8_lossy(&output.stderr)),
        });
    }
    serde_json::from_slice(&output.stdout).map_err(|e| AuthoringError::Metadata {
        detail: e.to_string(),
    })
}

/// The components the build made: of the package in `dir` if there is one, else of every
/// member of the workspace there. Only files that exist are returned.
fn components(metadata: &Metadata, dir: &Path) -> Vec<PathBuf> {
    let manifest = dir.join("Cargo.toml").canonicalize().ok();
    let own: Vec<&Package> = metadata
        .packages
        .iter()
        .filter(|p| Some(&p.manifest_path) == manifest.as_ref())
        .collect();
    let packages = if own.is_empty() {
        metadata.packages.iter().collect()
    } else {
        own
    };
    let release = metadata.target_directory.join(TARGET).join("release");
    packages
        .iter()
        .flat_map(|p| &p.targets)
        .filter(|t| t.crate_types.iter().any(|c| c == "cdylib"))
        .map(|t| release.join(format!("{}.wasm", t.name.replace('-', "_"))))
        .filter(|path| path.is_file())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components_come_from_cdylib_targets_of_the_package_in_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().canonicalize().unwrap();
        let release = root.join("target").join(TARGET).join("release");
        std::fs::create_dir_all(&release).unwrap();
        std::fs::write(release.join("my_filter.wasm"), b"").unwrap();
        std::fs::write(release.join("other.wasm"), b"").unwrap();
        std::fs::create_dir(root.join("my-filter")).unwrap();
        std::fs::write(root.join("my-filter/Cargo.toml"), "").unwrap();
        let json = serde_json::json!({
            "target_directory": root.join("target"),
            "packages": [
                {"manifest_path": root.join("my-filter/Cargo.toml"), "targets": [
                    {"name": "my-filter", "crate_types": ["cdylib"]},
                ]},
                {"manifest_path": root.join("other/Cargo.toml"), "targets": [
                    {"name": "other", "crate_types": ["cdylib"]},
                    {"name": "helper", "crate_types": ["lib"]},
                ]},
            ],
        });
        let metadata: Metadata = serde_json::from_value(json).unwrap();
        assert_eq!(
            components(&metadata, &root.join("my-filter")),
            vec![release.join("my_filter.wasm")]
        );
        assert_eq!(
            components(&metadata, &root),
            vec![release.join("my_filter.wasm"), release.join("other.wasm")],
            "a workspace root: every member's component"
        );
    }
}
