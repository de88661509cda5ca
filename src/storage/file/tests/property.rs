//! A property test: whatever is appended, rolled, trimmed and reopened reads back equal.

use proptest::prelude::*;

use super::*;

#[derive(Debug, Clone)]
enum Op {
    /// A batch with these body sizes; every third message gets headers.
    Append(Vec<usize>),
    Reopen {
        clean: bool,
    },
    /// Trim to this fraction (in percent) of the end.
    Trim(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => prop::collection::vec(0usize..700, 1..12).prop_map(Op::Append),
        2 => any::<bool>().prop_map(|clean| Op::Reopen { clean }),
        1 => (0u64..=100).prop_map(Op::Trim),
    ]
}

fn message(n: u64, size: usize) -> StoredMessage {
    let mut headers = Headers::new();
    if n.is_multiple_of(3) {
        headers.push("n", n.to_string());
    }
    StoredMessage {
        timestamp_ns: n,
        deliver_at_ms: n * 7,
        headers,
        body: Bytes::from(vec![(n % 251) as u8; size]),
        route: None,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    #[test]
    fn appended_messages_read_back_equal(
        ops in prop::collection::vec(op(), 1..40),
        cache_bytes in prop_oneof![Just(0u64), Just(2000u64), Just(1u64 << 20)],
    ) {
        let dir = tempfile::tempdir().unwrap();
        let config = StorageConfig { cache_bytes, ..config(4096) };
        let mut storage = Some(open(dir.path(), config.clone()));
        let mut model: Vec<StoredMessage> = Vec::new();
        let mut start = 0u64;
        // The start is written lazily: an unclean reopen may bring back trimmed messages,
        // but never below the start a clean close saved.
        let mut saved_start = 0u64;
        for op in ops {
            let current = storage.as_ref().unwrap();
            let log = current.open_topic(&topic("t")).unwrap();
            match op {
                Op::Append(sizes) => {
                    let first = model.len() as u64;
                    let batch: Vec<StoredMessage> = (first..)
                        .zip(&sizes)
                        .map(|(n, &size)| message(n, size))
                        .collect();
                    let range = log.append(batch.clone()).unwrap();
                    prop_assert_eq!(range, first..first + sizes.len() as u64);
                    model.extend(batch);
                }
                Op::Reopen { clean } => {
                    if clean {
                        current.close().unwrap();
                        saved_start = start;
                    }
                    drop(log);
                    drop(storage.take());
                    let reopened = open(dir.path(), config.clone());
                    let found = reopened.open_topic(&topic("t")).unwrap().start();
                    prop_assert!(saved_start <= found && found <= start, "{found}");
                    start = found;
                    storage = Some(reopened);
                }
                Op::Trim(percent) => {
                    let offset = model.len() as u64 * percent / 100;
                    log.trim(offset);
                    start = start.max(offset);
                    prop_assert_eq!(log.start(), start);
                }
            }
        }
        let log = storage.as_ref().unwrap().open_topic(&topic("t")).unwrap();
        prop_assert_eq!(log.end(), model.len() as u64);
        prop_assert_eq!(log.stats().corrupt_records, 0);
        let all = read_all(&*log);
        prop_assert_eq!(all.len() as u64, model.len() as u64 - start);
        for (offset, message) in &all {
            prop_assert_eq!(&**message, &model[*offset as usize]);
        }
        if let Some(last) = model.len().checked_sub(1).filter(|&l| l as u64 >= start) {
            let got = log.get(last as u64);
            prop_assert_eq!(got.as_deref(), Some(&model[last]));
        }
    }
}
