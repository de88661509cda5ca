//! A Quiver filter: keeps the messages whose header `header` equals `value`.
//!
//! Params: `header` and `value`, both required.

use quiver_plugin::{Filter, Message, Params};

struct HeaderEquals {
    header: String,
    value: String,
}

impl Filter for HeaderEquals {
    fn init(params: Params) -> Result<Self, String> {
        params.expect_only(&["header", "value"])?;
        Ok(HeaderEquals {
            header: params.required("header")?.to_owned(),
            value: params.required("value")?.to_owned(),
        })
    }

    fn keep(&mut self, msg: &Message<'_>) -> bool {
        msg.header_eq(&self.header, &self.value)
    }
}

quiver_plugin::filter!(HeaderEquals);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_only_the_matching_header() {
        let params = Params::from([("header", "type"), ("value", "invoice")]);
        let mut filter = HeaderEquals::init(params).unwrap();
        assert!(filter.keep(&Message::builder().header("type", "invoice").build()));
        assert!(!filter.keep(&Message::builder().header("type", "refund").build()));
        assert!(!filter.keep(&Message::builder().build()));
    }
}
