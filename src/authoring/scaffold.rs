//! `quiver plugin new`: writes a plugin crate that builds to a component on its own.
//!
//! The guest SDK's sources, the WIT and the guest workspace's lock file are compiled into
//! the `quiver` binary and written into the new crate, so the crate builds the same from a
//! fresh clone and from a binary used far from any clone, with the SDK this broker speaks:
//!
//! ```text
//! NAME/
//!   Cargo.toml            the plugin; its own [workspace]; release profile for plugins
//!   Cargo.lock            the versions the guest workspace is tested with
//!   .cargo/config.toml    [build] target = "wasm32-wasip2"
//!   src/lib.rs            a minimal working plugin of the chosen kind, with a unit test
//!   sdk/                  quiver-plugin-sdk (lib quiver_plugin), vendored
//!   sdk/wit/plugin.wit    the interface it is generated from
//! ```
//!
//! # Invariants
//! - An existing path is never written to: the crate's directory is created with
//!   `create_dir`, which fails if anything is there, and removed again if writing fails.
//! - The vendored SDK is the repository's `plugins/sdk` byte for byte, except that its
//!   `generate!` calls read `wit` (inside the SDK) instead of `../../wit`.

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::plugin::PluginKind;

use super::AuthoringError;

/// The SDK's sources, relative to its directory.
const SDK_SOURCES: &[(&str, &str)] = &[
    (
        "src/export.rs",
        include_str!("../../plugins/sdk/src/export.rs"),
    ),
    ("src/lib.rs", include_str!("../../plugins/sdk/src/lib.rs")),
    ("src/log.rs", include_str!("../../plugins/sdk/src/log.rs")),
    (
        "src/message.rs",
        include_str!("../../plugins/sdk/src/message.rs"),
    ),
    (
        "src/names.rs",
        include_str!("../../plugins/sdk/src/names.rs"),
    ),
    (
        "src/params.rs",
        include_str!("../../plugins/sdk/src/params.rs"),
    ),
    (
        "src/plugin.rs",
        include_str!("../../plugins/sdk/src/plugin.rs"),
    ),
];
const WIT: &str = include_str!("../../wit/plugin.wit");
/// The guest workspace's lock: cargo keeps the versions the new crate shares with it and
/// drops the rest.
const LOCK: &str = include_str!("../../plugins/Cargo.lock");
/// Where the SDK's `generate!` calls find the WIT in the repository, and in the new crate.
const WIT_PATH_IN_REPO: &str = r#"path: "../../wit""#;
const WIT_PATH_VENDORED: &str = r#"path: "wit""#;
/// The SDK's version and its wit-bindgen requirement, as in `plugins/Cargo.toml` (a test
/// checks they agree).
const SDK_VERSION: &str = "0.1.0";
const WIT_BINDGEN: &str =
    r#"{ version = "0.61", default-features = false, features = ["macros", "realloc", "std"] }"#;

const CARGO_TOML: &str = include_str!("templates/Cargo.toml.in");
const SDK_CARGO_TOML: &str = include_str!("templates/sdk.Cargo.toml.in");
const CONFIG_TOML: &str = include_str!("templates/config.toml.in");
const GITIGNORE: &str = include_str!("templates/gitignore.in");
const README: &str = include_str!("templates/README.md.in");

/// Longest crate name accepted.
const MAX_NAME_LEN: usize = 64;

/// Creates the plugin crate `name` in `dir` (default `./name`) and returns its directory.
pub fn create(name: &str, kind: PluginKind, dir: Option<&Path>) -> Result<PathBuf, AuthoringError> {
    check_name(name).map_err(|reason| AuthoringError::BadName {
        name: name.to_owned(),
        reason,
    })?;
    let dir = dir.map_or_else(|| PathBuf::from(name), Path::to_owned);
    if dir.exists() {
        return Err(AuthoringError::Exists { path: dir });
    }
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(parent).map_err(|source| AuthoringError::Write {
            path: parent.to_owned(),
            source,
        })?;
    }
    fs::create_dir(&dir).map_err(|source| match source.kind() {
        io::ErrorKind::AlreadyExists => AuthoringError::Exists { path: dir.clone() },
        _ => AuthoringError::Write {
            path: dir.clone(),
            source,
        },
    })?;
    let written = files(name, kind)
        .iter()
        .try_for_each(|(path, text)| write_file(&dir.join(path), text));
    if let Err(err) = written {
        // We created the directory a moment ago, so nothing of the user's is in it.
        let _ = fs::remove_dir_all(&dir);
        return Err(err);
    }
    Ok(dir)
}

/// Tells the user what was made and how to go on.
pub fn print_next_steps(
    out: &mut impl Write,
    name: &str,
    kind: PluginKind,
    dir: &Path,
) -> io::Result<()> {
    let shown = dir.display();
    writeln!(out, "created {kind} plugin `{name}` in {shown}")?;
    writeln!(out, "  cd {shown}")?;
    writeln!(out, "  quiver plugin build")?;
    writeln!(
        out,
        "  quiver plugin test target/wasm32-wasip2/release/{}.wasm --kind {kind} {}",
        crate_name(name),
        example_params(kind)
    )
}

/// Every file of the new crate: its path in the crate, and its text.
fn files(name: &str, kind: PluginKind) -> Vec<(String, String)> {
    let fill = |template: &str| {
        template
            .replace("{{name}}", name)
            .replace("{{crate_name}}", &crate_name(name))
            .replace("{{kind}}", kind.as_str())
            .replace("{{example_params}}", example_params(kind))
            .replace("{{example_headers}}", example_headers(kind))
            .replace("{{rules}}", &rules_example(name, kind))
            .replace("{{sdk_version}}", SDK_VERSION)
            .replace("{{wit_bindgen}}", WIT_BINDGEN)
    };
    let mut files = vec![
        ("Cargo.toml".to_owned(), fill(CARGO_TOML)),
        ("Cargo.lock".to_owned(), LOCK.to_owned()),
        (".cargo/config.toml".to_owned(), CONFIG_TOML.to_owned()),
        (".gitignore".to_owned(), GITIGNORE.to_owned()),
        ("README.md".to_owned(), fill(README)),
        ("src/lib.rs".to_owned(), plugin_source(kind).to_owned()),
        ("sdk/Cargo.toml".to_owned(), fill(SDK_CARGO_TOML)),
        ("sdk/wit/plugin.wit".to_owned(), WIT.to_owned()),
    ];
    files.extend(SDK_SOURCES.iter().map(|(path, text)| {
        let text = text.replace(WIT_PATH_IN_REPO, WIT_PATH_VENDORED);
        (format!("sdk/{path}"), text)
    }));
    files
}

fn write_file(path: &Path, text: &str) -> Result<(), AuthoringError> {
    let write = || {
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        fs::write(path, text)
    };
    write().map_err(|source| AuthoringError::Write {
        path: path.to_owned(),
        source,
    })
}

fn plugin_source(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Filter => include_str!("templates/filter.rs"),
        PluginKind::Sampler => include_str!("templates/sampler.rs"),
        PluginKind::Router => include_str!("templates/router.rs"),
    }
}

/// The `--param` flags that make the template plugin's `init` succeed.
fn example_params(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Filter => "--param header=type --param value=invoice",
        PluginKind::Sampler => "--param n=10",
        PluginKind::Router => "--param header=region --param default=other",
    }
}

fn example_headers(kind: PluginKind) -> &'static str {
    match kind {
        PluginKind::Filter | PluginKind::Sampler => r#"{"type":"invoice"}"#,
        PluginKind::Router => r#"{"region":"eu"}"#,
    }
}

/// A rules-file binding of the template plugin.
fn rules_example(name: &str, kind: PluginKind) -> String {
    let wasm = format!(
        "{name}/target/wasm32-wasip2/release/{}.wasm",
        crate_name(name)
    );
    match kind {
        PluginKind::Router => format!(
            "[[topic]]\nname = \"orders\"\n[topic.router]\n\
             plugin = \"{wasm}\"\nparams = {{ header = \"region\", default = \"other\" }}"
        ),
        PluginKind::Filter | PluginKind::Sampler => {
            let params = match kind {
                PluginKind::Sampler => r#"{ n = "10" }"#,
                _ => r#"{ header = "type", value = "invoice" }"#,
            };
            format!(
                "[[channel]]\ntopic = \"orders\"\nname = \"invoices\"\n[[channel.plugins]]\n\
                 kind = \"{kind}\"\nplugin = \"{wasm}\"\nparams = {params}"
            )
        }
    }
}

/// The name of the library target, and so of the `.wasm`: dashes become underscores.
pub fn crate_name(name: &str) -> String {
    name.replace('-', "_")
}

/// A name cargo accepts for a new package, and that does not clash with the SDK.
fn check_name(name: &str) -> Result<(), String> {
    const RESERVED: &[&str] = &[
        "alloc",
        "core",
        "proc_macro",
        "std",
        "test",
        "quiver_plugin",
        "quiver_plugin_sdk",
        // Rust keywords cannot be a library's name.
        "as",
        "async",
        "await",
        "break",
        "const",
        "continue",
        "crate",
        "dyn",
        "else",
        "enum",
        "extern",
        "false",
        "fn",
        "for",
        "if",
        "impl",
        "in",
        "let",
        "loop",
        "match",
        "mod",
        "move",
        "mut",
        "pub",
        "ref",
        "return",
        "self",
        "static",
        "struct",
        "super",
        "trait",
        "true",
        "type",
        "unsafe",
        "use",
        "where",
        "while",
        "abstract",
        "become",
        "box",
        "do",
        "final",
        "gen",
        "macro",
        "override",
        "priv",
        "try",
        "typeof",
        "unsized",
        "virtual",
        "yield",
    ];
    let Some(first) = name.chars().next() else {
        return Err("it is empty".to_owned());
    };
    if !first.is_ascii_alphabetic() {
        return Err("it must start with a letter".to_owned());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(format!(
            "{bad:?} is not allowed: use letters, digits, '-' and '_'"
        ));
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!("it is longer than {MAX_NAME_LEN} characters"));
    }
    if RESERVED.contains(&crate_name(name).as_str()) {
        return Err("it is reserved (a Rust keyword, a standard crate or the SDK)".to_owned());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(path: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
    }

    #[test]
    fn every_sdk_source_file_is_vendored() {
        let mut on_disk: Vec<String> = fs::read_dir(repo("plugins/sdk/src"))
            .unwrap()
            .map(|e| format!("src/{}", e.unwrap().file_name().to_string_lossy()))
            .collect();
        on_disk.sort();
        let embedded: Vec<&str> = SDK_SOURCES.iter().map(|(p, _)| *p).collect();
        assert_eq!(on_disk, embedded, "add the new SDK file to SDK_SOURCES");
    }

    #[test]
    fn the_vendored_sdk_reads_its_own_wit() {
        let lib = files("p", PluginKind::Filter)
            .into_iter()
            .find(|(path, _)| path == "sdk/src/lib.rs")
            .unwrap()
            .1;
        assert!(!lib.contains("../../wit"));
        assert_eq!(lib.matches(WIT_PATH_VENDORED).count(), 3, "one per world");
    }

    #[test]
    fn sdk_manifest_matches_the_guest_workspace() {
        let text = fs::read_to_string(repo("plugins/Cargo.toml")).unwrap();
        let workspace: toml::Table = toml::from_str(&text).unwrap();
        let version = &workspace["workspace"]["package"]["version"];
        assert_eq!(version.as_str(), Some(SDK_VERSION));
        let ours: toml::Table = toml::from_str(&format!("w = {WIT_BINDGEN}")).unwrap();
        assert_eq!(
            workspace["workspace"]["dependencies"]["wit-bindgen"],
            ours["w"]
        );
    }

    #[test]
    fn names_follow_cargo_rules() {
        for good in ["my-filter", "f", "a_b-9"] {
            assert_eq!(check_name(good), Ok(()), "{good}");
        }
        let why = |name| check_name(name).unwrap_err();
        assert_eq!(why(""), "it is empty");
        assert_eq!(why("9lives"), "it must start with a letter");
        assert_eq!(
            why("my filter"),
            "' ' is not allowed: use letters, digits, '-' and '_'"
        );
        assert!(why("../x").contains("must start with a letter"));
        assert!(why("fn").contains("reserved"));
        assert!(why("quiver-plugin").contains("reserved"));
        assert!(why(&"a".repeat(65)).contains("longer than 64"));
    }

    #[test]
    fn an_existing_directory_is_refused_and_left_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("taken");
        fs::create_dir(&dir).unwrap();
        fs::write(dir.join("keep.txt"), "mine").unwrap();
        let err = create("taken", PluginKind::Filter, Some(&dir)).unwrap_err();
        assert!(matches!(err, AuthoringError::Exists { .. }), "{err}");
        assert_eq!(fs::read_to_string(dir.join("keep.txt")).unwrap(), "mine");
    }

    #[test]
    fn a_new_crate_has_its_own_workspace_and_target() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = create("my-router", PluginKind::Router, Some(&tmp.path().join("r"))).unwrap();
        let manifest: toml::Table =
            toml::from_str(&fs::read_to_string(dir.join("Cargo.toml")).unwrap()).unwrap();
        assert_eq!(manifest["package"]["name"].as_str(), Some("my-router"));
        assert!(manifest.contains_key("workspace"));
        let config = fs::read_to_string(dir.join(".cargo/config.toml")).unwrap();
        assert!(config.contains("target = \"wasm32-wasip2\""));
        let lib = fs::read_to_string(dir.join("src/lib.rs")).unwrap();
        assert!(lib.contains("quiver_plugin::router!(ByHeader);"));
        assert_eq!(
            fs::read_to_string(dir.join("sdk/wit/plugin.wit")).unwrap(),
            WIT
        );
        let readme = fs::read_to_string(dir.join("README.md")).unwrap();
        assert!(!readme.contains("{{"), "{readme}");
        assert!(readme.contains("release/my_router.wasm"));
    }
}
