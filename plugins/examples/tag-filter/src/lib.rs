//! Filter: keeps a message when its headers match an expression.
//!
//! ```toml
//! filter = { plugin = "tag_filter.wasm", params = { expr = 'type == "invoice" && region in ("eu", "us")' } }
//! ```
//!
//! Params: `expr` (required), parsed once at `init`; a syntax error refuses the binding and
//! names the column. The language is in `src/expr.rs`: `==`, `!=`, `in (...)`, `not in (...)`,
//! `exists(name)`, `&&`, `||`, `!` and parentheses, modelled on RocketMQ's SQL92 filters. A
//! missing header compares as not equal to everything.

mod expr;

use expr::{Expr, Headers};
use quiver_plugin::{Filter, Message, Params};

struct TagFilter {
    expr: Expr,
}

impl Filter for TagFilter {
    fn init(params: Params) -> Result<Self, String> {
        params.expect_only(&["expr"])?;
        let expr =
            Expr::parse(params.required("expr")?).map_err(|e| format!("parameter `expr`: {e}"))?;
        Ok(TagFilter { expr })
    }

    fn keep(&mut self, msg: &Message<'_>) -> bool {
        self.expr.eval(&Host(msg))
    }
}

/// The message's headers, compared by the host where the expression allows.
struct Host<'m, 'a>(&'m Message<'a>);

impl Headers for Host<'_, '_> {
    fn get(&self, name: &str) -> Option<String> {
        self.0.header(name)
    }

    fn has(&self, name: &str) -> bool {
        self.0.has_header(name)
    }

    fn eq(&self, name: &str, value: &str) -> bool {
        self.0.header_eq(name, value)
    }

    fn index(&self, name: &str, values: &[String]) -> Option<usize> {
        self.0.header_index(name, values)
    }
}

quiver_plugin::filter!(TagFilter);

#[cfg(test)]
mod tests {
    use super::*;

    fn init(params: &[(&str, &str)]) -> Result<TagFilter, String> {
        TagFilter::init(params.iter().copied().collect())
    }

    #[test]
    fn keeps_matching_messages() {
        let mut f = init(&[("expr", r#"type == "invoice" && region in ("eu","us")"#)]).unwrap();
        let eu = Message::builder()
            .header("type", "invoice")
            .header("region", "eu")
            .build();
        let ap = Message::builder()
            .header("type", "invoice")
            .header("region", "ap")
            .build();
        let none = Message::builder().build();
        assert!(f.keep(&eu));
        assert!(!f.keep(&ap));
        assert!(!f.keep(&none));
    }

    #[test]
    fn init_refuses_bad_params() {
        assert_eq!(
            init(&[]).err().unwrap(),
            "missing required parameter `expr`"
        );
        assert_eq!(
            init(&[("expr", "exists(a)"), ("mode", "x")]).err().unwrap(),
            "unknown parameter `mode` (expected: expr)"
        );
        assert_eq!(
            init(&[("expr", "type ==")]).err().unwrap(),
            "parameter `expr`: syntax error at column 8: expected a quoted string or a number after `==`, found the end"
        );
    }
}
