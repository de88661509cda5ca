//! Filter: keeps a message when its JSON body has a field equal to a value, or present.
//!
//! ```toml
//! filter = { plugin = "json_filter.wasm", params = { field = "order.region", equals = "eu" } }
//! ```
//!
//! Params:
//! - `field` (required): a dotted path from the top-level value, e.g. `order.region`. A
//!   segment that is a number indexes an array (`items.0.sku`). Segments may not be empty.
//! - exactly one of:
//!   - `equals`: keep when the field is a string equal to it, or a number or a bool whose
//!     JSON text equals it (`42`, `-7`, `2.5`, `true`). Numbers compare as text, as
//!     serde_json writes them: `1e3` in a body is `1000.0`, not `1000`. `null`, objects
//!     and arrays never equal anything;
//!   - `exists`: `true` keeps bodies where the field is present (even as `null`), `false`
//!     keeps bodies where it is absent.
//!
//! A body that is not valid JSON is skipped (never kept), whatever the params.

use quiver_plugin::{Filter, Message, Params};
use serde_json::Value;

struct JsonFilter {
    rule: Rule,
}

impl Filter for JsonFilter {
    fn init(params: Params) -> Result<Self, String> {
        Ok(JsonFilter {
            rule: Rule::from_params(&params)?,
        })
    }

    fn keep(&mut self, msg: &Message<'_>) -> bool {
        self.rule.matches(&msg.body())
    }
}

quiver_plugin::filter!(JsonFilter);

/// A checked `field` path and what to test it for.
#[derive(Debug, Clone, PartialEq)]
struct Rule {
    path: Vec<String>,
    test: Test,
}

#[derive(Debug, Clone, PartialEq)]
enum Test {
    Equals(String),
    Exists(bool),
}

impl Rule {
    fn from_params(params: &Params) -> Result<Rule, String> {
        params.expect_only(&["field", "equals", "exists"])?;
        let field = params.required("field")?;
        let path: Vec<String> = field.split('.').map(str::to_owned).collect();
        if path.iter().any(String::is_empty) {
            return Err(format!(
                "parameter `field`: {field:?} has an empty segment (write a path like `order.region`)"
            ));
        }
        let test = match (params.get("equals"), params.parse::<bool>("exists")?) {
            (Some(value), None) => Test::Equals(value.to_owned()),
            (None, Some(present)) => Test::Exists(present),
            (Some(_), Some(_)) => {
                return Err("give one of `equals` and `exists`, not both".to_owned())
            }
            (None, None) => return Err("missing parameter: give `equals` or `exists`".to_owned()),
        };
        Ok(Rule { path, test })
    }

    fn matches(&self, body: &[u8]) -> bool {
        let Ok(doc) = serde_json::from_slice::<Value>(body) else {
            return false;
        };
        let field = self.lookup(&doc);
        match &self.test {
            Test::Exists(present) => field.is_some() == *present,
            Test::Equals(wanted) => field.is_some_and(|v| equals(v, wanted)),
        }
    }

    fn lookup<'v>(&self, doc: &'v Value) -> Option<&'v Value> {
        self.path
            .iter()
            .try_fold(doc, |value, segment| match value {
                Value::Object(map) => map.get(segment),
                Value::Array(items) => items.get(segment.parse::<usize>().ok()?),
                _ => None,
            })
    }
}

fn equals(value: &Value, wanted: &str) -> bool {
    match value {
        Value::String(s) => s == wanted,
        Value::Number(n) => n.to_string() == wanted,
        Value::Bool(b) => wanted == if *b { "true" } else { "false" },
        Value::Null | Value::Array(_) | Value::Object(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(params: &[(&str, &str)]) -> Result<Rule, String> {
        Rule::from_params(&params.iter().copied().collect())
    }

    fn keeps(params: &[(&str, &str)], body: &str) -> bool {
        rule(params).unwrap().matches(body.as_bytes())
    }

    #[test]
    fn equals_compares_strings_numbers_and_bools() {
        let p = [("field", "order.region"), ("equals", "eu")];
        assert!(keeps(&p, r#"{"order":{"region":"eu"}}"#));
        assert!(!keeps(&p, r#"{"order":{"region":"us"}}"#));
        assert!(!keeps(&p, r#"{"order":{"zone":"eu"}}"#));
        assert!(!keeps(&p, r#"{"order":"eu"}"#));
        assert!(keeps(&[("field", "n"), ("equals", "42")], r#"{"n":42}"#));
        assert!(keeps(&[("field", "n"), ("equals", "2.5")], r#"{"n":2.5}"#));
        assert!(!keeps(
            &[("field", "n"), ("equals", "1000")],
            r#"{"n":1e3}"#
        ));
        assert!(keeps(
            &[("field", "ok"), ("equals", "true")],
            r#"{"ok":true}"#
        ));
        assert!(!keeps(
            &[("field", "x"), ("equals", "null")],
            r#"{"x":null}"#
        ));
        assert!(!keeps(&[("field", "x"), ("equals", "[]")], r#"{"x":[]}"#));
    }

    #[test]
    fn numeric_segments_index_arrays() {
        let p = [("field", "items.1.sku"), ("equals", "b")];
        assert!(keeps(&p, r#"{"items":[{"sku":"a"},{"sku":"b"}]}"#));
        assert!(!keeps(&p, r#"{"items":[{"sku":"a"}]}"#));
    }

    #[test]
    fn exists_true_and_false() {
        let yes = [("field", "a.b"), ("exists", "true")];
        let no = [("field", "a.b"), ("exists", "false")];
        assert!(keeps(&yes, r#"{"a":{"b":null}}"#));
        assert!(!keeps(&yes, r#"{"a":{}}"#));
        assert!(keeps(&no, r#"{"a":{}}"#));
        assert!(!keeps(&no, r#"{"a":{"b":1}}"#));
    }

    #[test]
    fn non_json_bodies_are_skipped() {
        assert!(!keeps(&[("field", "a"), ("exists", "false")], "not json"));
        assert!(!keeps(&[("field", "a"), ("equals", "1")], ""));
    }

    #[test]
    fn init_refuses_bad_params() {
        let err = |p: &[(&str, &str)]| rule(p).unwrap_err();
        assert_eq!(
            err(&[("equals", "x")]),
            "missing required parameter `field`"
        );
        assert_eq!(
            err(&[("field", "a")]),
            "missing parameter: give `equals` or `exists`"
        );
        assert_eq!(
            err(&[("field", "a"), ("equals", "x"), ("exists", "true")]),
            "give one of `equals` and `exists`, not both"
        );
        assert_eq!(
            err(&[("field", "a"), ("exists", "yes")]),
            "parameter `exists`: bad value \"yes\": provided string was not `true` or `false`"
        );
        assert_eq!(
            err(&[("field", "a..b"), ("exists", "true")]),
            "parameter `field`: \"a..b\" has an empty segment (write a path like `order.region`)"
        );
        assert_eq!(
            err(&[("field", "a"), ("exists", "true"), ("path", "x")]),
            "unknown parameter `path` (expected: field, equals, exists)"
        );
    }

    #[test]
    fn filter_reads_the_body() {
        let mut f = JsonFilter::init(Params::from([("field", "t"), ("equals", "x")])).unwrap();
        assert!(f.keep(&Message::builder().body(r#"{"t":"x"}"#).build()));
        assert!(!f.keep(&Message::builder().body(r#"{"t":"y"}"#).build()));
    }
}
