//! The guest side of the plugins: the SDK's and the example plugins' own unit tests (the
//! expression parser, JSON paths, sampling rules, topic patterns), run on the host target so
//! that `cargo test` covers them too.

use std::process::Command;

#[test]
fn plugin_workspace_unit_tests_pass() {
    let root = env!("CARGO_MANIFEST_DIR");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let rustc = Command::new("rustc").arg("-vV").output().unwrap();
    let host = String::from_utf8(rustc.stdout)
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("host: ").map(str::to_owned))
        .expect("rustc -vV names the host");
    let output = Command::new(cargo)
        .args(["test", "--manifest-path"])
        .arg(format!("{root}/plugins/Cargo.toml"))
        .args(["--workspace", "--target", &host])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "plugin workspace tests failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}
