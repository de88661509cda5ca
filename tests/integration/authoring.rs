//! `quiver plugin new|build|test` as a plugin author runs them: a scaffold of each kind is
//! built to a component and run on messages it must keep, skip or route; the example and
//! hostile plugins of `plugins/` run through `plugin test` too.
//!
//! Scaffold builds share one cargo target directory under `target/tmp`, so wit-bindgen is
//! compiled once (and not again on later runs).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use crate::process::BIN;

/// Where scaffold builds put their artifacts.
fn scaffold_target_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("plugin-scaffolds")
}

fn quiver(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", scaffold_target_dir())
        .output()
        .expect("quiver runs")
}

fn stdout_of(out: &Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

/// `plugin new NAME --kind KIND` in `dir`, then `plugin build` in it: the component's path.
fn new_and_build(dir: &Path, name: &str, kind: &str) -> String {
    let out = quiver(dir, &["plugin", "new", name, "--kind", kind]);
    let said = stdout_of(&out, "plugin new");
    assert!(
        said.starts_with(&format!("created {kind} plugin `{name}`")),
        "{said}"
    );
    let out = quiver(&dir.join(name), &["plugin", "build"]);
    let wasm = stdout_of(&out, "plugin build").trim().to_owned();
    let file = name.replace('-', "_");
    assert!(
        wasm.ends_with(&format!("wasm32-wasip2/release/{file}.wasm")),
        "{wasm}"
    );
    assert!(Path::new(&wasm).is_file(), "{wasm}");
    wasm
}

fn decisions(dir: &Path, wasm: &str, kind: &str, rest: &[&str]) -> String {
    // Builds run alongside; a starved debug build must not turn a decision into a timeout.
    let mut args = vec![
        "plugin",
        "test",
        wasm,
        "--kind",
        kind,
        "--call-timeout",
        "5s",
    ];
    args.extend_from_slice(rest);
    stdout_of(&quiver(dir, &args), "plugin test")
}

#[test]
fn scaffolds_of_every_kind_build_and_decide() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();

    let filter = new_and_build(dir, "my-filter", "filter");
    let got = decisions(
        dir,
        &filter,
        "filter",
        &[
            "--param",
            "header=type",
            "--param",
            "value=invoice",
            "--message",
            r#"{"headers":{"type":"invoice","region":"eu"},"body":"{}"}"#,
            "--message",
            r#"{"headers":[["type","refund"]]}"#,
            "--message",
            "{}",
        ],
    );
    assert_eq!(got, "keep\nskip\nskip\n");

    let sampler = new_and_build(dir, "my-sampler", "sampler");
    std::fs::write(
        dir.join("five.jsonl"),
        "{}\n{}\n\n{}\n{}\n{\"body\":\"x\"}\n",
    )
    .unwrap();
    let got = decisions(
        dir,
        &sampler,
        "sampler",
        &["-p", "n=2", "--messages", "five.jsonl"],
    );
    assert_eq!(got, "keep\nskip\nkeep\nskip\nkeep\n");

    let router = new_and_build(dir, "my-router", "router");
    let messages = [
        "-m",
        r#"{"headers":{"region":"eu"}}"#,
        "-m",
        r#"{"headers":{"region":"no spaces"}}"#,
        "-m",
        "{}",
    ];
    let mut args = vec!["-p", "header=region", "-p", "default=other"];
    args.extend_from_slice(&messages);
    let got = decisions(dir, &router, "router", &args);
    assert_eq!(got, "channels=eu\nchannels=other\nchannels=other\n");
    let mut args = vec!["-p", "header=region"];
    args.extend_from_slice(&messages);
    let got = decisions(dir, &router, "router", &args);
    assert_eq!(got, "channels=eu\nunrouted\nunrouted\n");

    let out = quiver(dir, &["plugin", "new", "my-filter", "--kind", "filter"]);
    assert!(!out.status.success(), "an existing directory is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
}

/// The components of `plugins/`, built once with `quiver plugin build` on the workspace.
fn guest(name: &str) -> String {
    static BUILT: OnceLock<Vec<String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let out = Command::new(BIN)
            .args(["plugin", "build", "plugins"])
            .current_dir(root)
            .output()
            .expect("quiver runs");
        let paths = stdout_of(&out, "plugin build plugins");
        paths.lines().map(str::to_owned).collect()
    });
    let file = format!("/{name}.wasm");
    built
        .iter()
        .find(|p| p.ends_with(&file))
        .unwrap_or_else(|| panic!("{name} not among {built:?}"))
        .clone()
}

#[test]
fn example_plugins_run_under_plugin_test() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let got = decisions(
        dir,
        &guest("tag_filter"),
        "filter",
        &[
            "-p",
            r#"expr=type == "invoice" && region in ("eu", "us")"#,
            "-m",
            r#"{"headers":{"type":"invoice","region":"eu"}}"#,
            "-m",
            r#"{"headers":{"type":"invoice","region":"apac"}}"#,
        ],
    );
    assert_eq!(got, "keep\nskip\n");

    let got = decisions(
        dir,
        &guest("header_router"),
        "router",
        &[
            "-p",
            "header=region",
            "-p",
            "route.eu=eu-orders,audit",
            "-p",
            "forward.eu=eu-mirror",
            "-m",
            r#"{"headers":{"region":"eu"}}"#,
            "-m",
            r#"{"headers":{"region":"us"}}"#,
            "--json",
        ],
    );
    assert_eq!(
        got,
        concat!(
            r#"{"channels":["eu-orders","audit"],"decision":"route","forward":["eu-mirror"]}"#,
            "\n",
            r#"{"channels":[],"decision":"unrouted","forward":[]}"#,
            "\n"
        )
    );

    let got = decisions(
        dir,
        &guest("one_in_n"),
        "sampler",
        &["-p", "n=3", "--bench", "1000"],
    );
    assert!(
        got.starts_with("keep\t")
            && got.contains(" ns/call\t")
            && got.ends_with(" ns/msg in batches of 64\n"),
        "{got}"
    );
}

#[test]
fn refusals_and_bad_files_are_reported() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = quiver(
        dir,
        &["plugin", "test", &guest("bad_init"), "--kind", "filter"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("refused its parameters: bad-init always refuses"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no decision after a refusal");

    // A sampler that reads the clock is not a filter.
    let out = quiver(
        dir,
        &["plugin", "test", &guest("rate_limit"), "--kind", "filter"],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("plugin rate_limit targets the sampler world but is bound as a filter"),
        "{stderr}"
    );
    assert!(out.stdout.is_empty(), "no decision after a refusal");

    let got = decisions(dir, &guest("trap"), "filter", &["-m", "{}", "-m", "{}"]);
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines.len(), 2, "{got}");
    assert!(
        lines.iter().all(|l| l.starts_with("fault: plugin trapped")),
        "{got}"
    );

    let tmp = tempfile::tempdir().unwrap();
    let notes = tmp.path().join("notes.wasm");
    std::fs::write(&notes, "not a component").unwrap();
    let out = quiver(
        tmp.path(),
        &[
            "plugin",
            "test",
            notes.to_str().unwrap(),
            "--kind",
            "filter",
        ],
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("plugin notes is not a WebAssembly component"),
        "{stderr}"
    );
}
