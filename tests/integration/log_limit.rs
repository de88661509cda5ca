//! Log lines that a message can cause are rate-limited: a real `quiver serve` whose router
//! answers an invalid channel name for each of 3,000 messages writes a handful of WARN lines
//! and a count of the rest, not 3,000 lines.

use std::process::Command;
use std::time::{Duration, Instant};

use quiver::client::Client;
use quiver::message::NewMessage;

use crate::process::{http_request, ServeProcess, BIN, EPHEMERAL};
use crate::support::topic;
use crate::wasm::guest;

const MESSAGES: u64 = 3000;
const REFUSED: &str = "router answer refused; applying on_failure";
const SUMMARY: &str = "similar log lines suppressed";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_router_answers_log_a_handful_of_lines_and_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let rules = dir.path().join("rules.toml");
    let router = guest("wrong_world");
    std::fs::write(
        &rules,
        format!(
            "[[topic]]\nname = \"noisy\"\n[topic.router]\nplugin = {router:?}\n\
             params = {{ channel = \"no such!\" }}\non_failure = \"skip\"\n"
        ),
    )
    .unwrap();
    let mut command = Command::new(BIN);
    command
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(EPHEMERAL)
        .arg("--rules")
        .arg(&rules)
        // A 2 s interval instead of 10 s, so that the count comes sooner.
        .env(quiver::log_limit::INTERVAL_ENV, "2000");
    let serve = ServeProcess::spawn_logged(command);
    let client = Client::connect(&serve.options()).await.unwrap();
    let producer = client.producer().await.unwrap();
    for batch in 0..MESSAGES / 100 {
        let messages = (0..100)
            .map(|i| NewMessage::new(format!("m{}", batch * 100 + i)))
            .collect();
        producer
            .publish_batch(&topic("noisy"), messages)
            .await
            .unwrap();
    }
    let (status, body) = http_request(serve.http, "GET", "/stats", "");
    assert_eq!(status, 200, "{body}");
    let stats: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        stats["rules"]["bindings"][0]["invalid_answers"], MESSAGES,
        "every answer was refused"
    );

    // Every refusal is either written or counted in a summary, once its interval ended.
    let deadline = Instant::now() + Duration::from_secs(60);
    let count = loop {
        let count = LogCount::of(&serve.log());
        if count.written + count.suppressed == MESSAGES && count.summaries > 0 {
            break count;
        }
        assert!(
            Instant::now() < deadline,
            "not every refusal was logged or counted within 60 s: {count:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        count.written <= 100,
        "a handful of lines, not one per message: {count:?}"
    );
    assert!(
        count.warn_lines <= count.written + count.summaries + 10,
        "no other WARN line per message: {count:?}"
    );
}

/// What the broker's stderr says about the refused answers.
#[derive(Debug, Default)]
struct LogCount {
    /// Refusals written as lines.
    written: u64,
    /// Summary lines for the refusals.
    summaries: u64,
    /// Refusals the summaries count as suppressed.
    suppressed: u64,
    /// Every WARN line.
    warn_lines: u64,
}

impl LogCount {
    fn of(lines: &[String]) -> LogCount {
        let mut count = LogCount::default();
        for line in lines.iter().map(|l| strip_ansi(l)) {
            if !line.contains(" WARN ") {
                continue;
            }
            count.warn_lines += 1;
            if !line.contains(REFUSED) {
                continue;
            }
            if !line.contains(SUMMARY) {
                count.written += 1;
                continue;
            }
            count.summaries += 1;
            let n = line
                .split_once(" suppressed=")
                .and_then(|(_, rest)| rest.split_whitespace().next())
                .and_then(|n| n.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no count in {line:?}"));
            count.suppressed += n;
        }
        count
    }
}

/// `line` without its terminal colour escapes (`ESC [ ... m`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c == 'm' {
                    break;
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}
