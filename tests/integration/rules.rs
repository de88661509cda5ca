//! Rules from the outside: `quiver rules check`, and a `quiver serve --rules FILE` reloaded by
//! `POST /rules/reload`, SIGHUP and a change to the file, watched through `/stats`.

use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::process::{http_request, write_atomically, ServeProcess, BIN};
use crate::wasm::guest;

/// A rules file: channel `orders/audit` with a sampler and a tag filter on `expr`.
fn rules(expr: &str) -> String {
    format!(
        "[[channel]]\ntopic = \"orders\"\nname = \"audit\"\nmax_attempts = 5\nmsg_timeout = \"30s\"\n\
         [[channel.plugins]]\nkind = \"sampler\"\nplugin = \"{}\"\nparams = {{ n = 2 }}\n\
         [[channel.plugins]]\nkind = \"filter\"\nplugin = \"{}\"\nparams = {{ expr = '{expr}' }}\n",
        guest("one_in_n").display(),
        guest("tag_filter").display()
    )
}

fn rules_stats(addr: SocketAddr) -> serde_json::Value {
    let (status, body) = http_request(addr, "GET", "/stats", "");
    assert_eq!(status, 200, "{body}");
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    stats["rules"].clone()
}

/// Polls `/stats` until `done` holds of its `rules` object, for at most 20 s.
fn wait_for(
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rules = rules_stats(addr);
        if done(&rules) {
            return rules;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}: {rules:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn rules_check_lists_bindings_or_every_problem() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.toml");
    std::fs::write(&good, rules("type == \"invoice\"")).unwrap();
    let out = Command::new(BIN)
        .args(["rules", "check"])
        .arg(&good)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("orders/audit  sampler one_in_n"),
        "{stdout}"
    );
    assert!(
        stdout.contains("orders/audit  filter tag_filter"),
        "{stdout}"
    );

    let broken = dir.path().join("broken.toml");
    let text = format!(
        "{}[[channel.plugins]]\nkind = \"filter\"\nplugin = \"{}\"\n\
         [[channel]]\ntopic = \"orders\"\nname = \"x\"\n[[channel.plugins]]\nkind = \"filter\"\nplugin = \"gone.wasm\"\n",
        rules("(("),
        guest("bad_init").display()
    );
    std::fs::write(&broken, text).unwrap();
    let out = Command::new(BIN)
        .args(["rules", "check"])
        .arg(&broken)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("gone.wasm does not exist"), "{stdout}");

    std::fs::write(
        &broken,
        format!(
            "{}[[channel.plugins]]\nkind = \"filter\"\nplugin = \"{}\"\n",
            rules("(("),
            guest("bad_init").display()
        ),
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["rules", "check"])
        .arg(&broken)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let problems = stdout.lines().filter(|l| l.starts_with("problem:")).count();
    assert_eq!(problems, 2, "the filter's bad expr and bad_init: {stdout}");
    assert!(stdout.contains("bad-init always refuses"), "{stdout}");
}

#[test]
fn serve_reloads_on_request_sighup_and_file_change() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rules.toml");
    std::fs::write(&path, rules("type == \"a\"")).unwrap();
    let rules_arg = path.display().to_string();
    let serve = ServeProcess::start(&dir.path().join("data"), &["--rules", &rules_arg]);
    let addr = serve.http;

    let first = rules_stats(addr);
    assert_eq!(first["version"], 1, "{first:#}");
    assert_eq!(first["bindings"].as_array().unwrap().len(), 2);
    assert_eq!(first["bindings"][0]["kind"], "sampler");
    assert_eq!(first["bindings"][0]["channel"], "audit");

    // A broken file: the watcher's reload fails, so does a request; the old rules stay.
    write_atomically(&path, rules("(("));
    wait_for(addr, "a failed file reload", |r| {
        r["failed_reloads"].as_u64() >= Some(1)
    });
    let (status, body) = http_request(addr, "POST", "/rules/reload", "");
    assert_eq!(status, 422, "{body}");
    assert!(body.contains("refused its parameters"), "{body}");
    let after = rules_stats(addr);
    assert_eq!(after["version"], 1, "{after:#}");
    assert!(after["last_error"]["reason"]
        .as_str()
        .unwrap()
        .contains("tag_filter"));

    assert!(after["previous_error"].is_null(), "{after:#}");
    let failed_at = after["last_error"]["at"].as_u64().unwrap();

    // A good file: the watcher reloads it, which clears the failure and keeps it as the
    // previous one; a request reloads again.
    write_atomically(&path, rules("type == \"b\""));
    let cleared = wait_for(addr, "a file reload", |r| r["version"] == 2);
    assert!(cleared["last_error"].is_null(), "{cleared:#}");
    let previous = &cleared["previous_error"];
    assert!(
        previous["reason"].as_str().unwrap().contains("tag_filter"),
        "{cleared:#}"
    );
    assert_eq!(previous["at"].as_u64(), Some(failed_at), "{cleared:#}");
    assert!(
        previous["cleared_at"].as_u64() >= Some(failed_at),
        "{cleared:#}"
    );
    let (status, body) = http_request(addr, "POST", "/rules/reload", "");
    assert_eq!(status, 200, "{body}");
    let reloaded: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(reloaded["version"], 3, "{reloaded:#}");

    serve.signal("HUP");
    let last = wait_for(addr, "a SIGHUP reload", |r| r["version"] == 4);
    assert_eq!(last["reloads"], 3);
}
