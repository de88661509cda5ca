//! Query parameters as nsqd reads them: the first value of a key counts, a key given without a
//! value is present and empty, and names are checked with nsqd's error codes.

use axum::extract::{FromRequestParts, Query};
use axum::http::request::Parts;

use super::reply::NsqError;
use crate::message::{ChannelName, ChannelSettings, OrderBy, TopicName};

/// The query string, in order. Extraction fails (`INVALID_REQUEST`) only on a query that
/// cannot be decoded.
#[derive(Debug, Default)]
pub(crate) struct Params(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = NsqError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, NsqError> {
        let Query(pairs) = Query::<Vec<(String, String)>>::from_request_parts(parts, state)
            .await
            .map_err(|_| NsqError::INVALID_REQUEST)?;
        Ok(Params(pairs))
    }
}

impl Params {
    #[cfg(test)]
    pub(crate) fn from_pairs(pairs: &[(&str, &str)]) -> Params {
        Params(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    }

    /// The first value of `key`.
    pub(crate) fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// `topic`: `MISSING_ARG_TOPIC` when absent, `invalid` when not a valid name (nsqd says
    /// `INVALID_TOPIC` on publishes and topic calls, `INVALID_ARG_TOPIC` on channel calls).
    pub(crate) fn topic(&self, invalid: &'static str) -> Result<TopicName, NsqError> {
        let name = self
            .get("topic")
            .ok_or(NsqError::bad_request("MISSING_ARG_TOPIC"))?;
        TopicName::new(name).map_err(|_| NsqError::bad_request(invalid))
    }

    /// `topic` for the calls nsqd does not validate it on: a name that cannot exist is
    /// `TOPIC_NOT_FOUND`.
    pub(crate) fn existing_topic(&self) -> Result<TopicName, NsqError> {
        let name = self
            .get("topic")
            .ok_or(NsqError::bad_request("MISSING_ARG_TOPIC"))?;
        TopicName::new(name).map_err(|_| NsqError::not_found("TOPIC_NOT_FOUND"))
    }

    /// `topic` and `channel`, checked as nsqd's `GetTopicChannelArgs`.
    pub(crate) fn topic_channel(&self) -> Result<(TopicName, ChannelName), NsqError> {
        let topic = self.topic("INVALID_ARG_TOPIC")?;
        let name = self
            .get("channel")
            .ok_or(NsqError::bad_request("MISSING_ARG_CHANNEL"))?;
        let channel =
            ChannelName::new(name).map_err(|_| NsqError::bad_request("INVALID_ARG_CHANNEL"))?;
        Ok((topic, channel))
    }

    /// Quiver's channel settings on `/channel/create`: `ordering` (`none`, `channel`, `key`)
    /// and `order_key_header`. nsqd has neither; its clients simply never send them.
    pub(crate) fn channel_settings(&self) -> Result<ChannelSettings, NsqError> {
        let ordering = self.get("ordering");
        let ordering =
            OrderBy::parse_setting(ordering, self.get("order_key_header")).map_err(|_| {
                match ordering {
                    None => NsqError::bad_request("MISSING_ARG_ORDERING"),
                    Some(_) => NsqError::bad_request("INVALID_ARG_ORDERING"),
                }
            })?;
        Ok(ChannelSettings {
            ordering,
            ..ChannelSettings::default()
        })
    }

    /// A boolean as nsqd reads one: `true`/`1` and `false`/`0`; `None` when absent or
    /// anything else.
    pub(crate) fn bool(&self, key: &str) -> Option<bool> {
        match self.get(key)? {
            "true" | "1" => Some(true),
            "false" | "0" => Some(false),
            _ => None,
        }
    }

    pub(crate) fn has(&self, key: &str) -> bool {
        self.get(key).is_some()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn code<T: std::fmt::Debug>(result: Result<T, NsqError>) -> (u16, &'static str) {
        let error = result.unwrap_err();
        (error.status.as_u16(), error.code)
    }

    #[test]
    fn first_value_counts_and_empty_values_are_present() {
        let params = Params::from_pairs(&[("topic", "a"), ("topic", "b"), ("binary", "")]);
        assert_eq!(params.get("topic"), Some("a"));
        assert!(params.has("binary"));
        assert_eq!(params.bool("binary"), None);
        assert!(!params.has("defer"));
    }

    #[test]
    fn topic_and_channel_errors_use_nsqd_codes() {
        let none = Params::default();
        assert_eq!(
            code(none.topic("INVALID_TOPIC")),
            (400, "MISSING_ARG_TOPIC")
        );
        let bad = Params::from_pairs(&[("topic", "no spaces")]);
        assert_eq!(code(bad.topic("INVALID_TOPIC")), (400, "INVALID_TOPIC"));
        assert_eq!(code(bad.topic_channel()), (400, "INVALID_ARG_TOPIC"));
        assert_eq!(code(bad.existing_topic()), (404, "TOPIC_NOT_FOUND"));
        let topic_only = Params::from_pairs(&[("topic", "t")]);
        assert_eq!(
            code(topic_only.topic_channel()),
            (400, "MISSING_ARG_CHANNEL")
        );
        let bad_channel = Params::from_pairs(&[("topic", "t"), ("channel", "")]);
        assert_eq!(
            code(bad_channel.topic_channel()),
            (400, "INVALID_ARG_CHANNEL")
        );
        let good = Params::from_pairs(&[("topic", "t"), ("channel", "c#ephemeral")]);
        let (topic, channel) = good.topic_channel().unwrap();
        assert_eq!((topic.as_str(), channel.as_str()), ("t", "c#ephemeral"));
    }

    #[test]
    fn booleans_read_as_nsqd_reads_them() {
        let params = Params::from_pairs(&[("a", "1"), ("b", "false"), ("c", "yes")]);
        assert_eq!(params.bool("a"), Some(true));
        assert_eq!(params.bool("b"), Some(false));
        assert_eq!(params.bool("c"), None);
        assert_eq!(params.bool("d"), None);
    }
}
