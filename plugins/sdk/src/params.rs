//! A binding's parameters, as written in the rules file, with the checks every `init` needs.
//!
//! Error messages name the parameter and say what is wrong with it; `init` returns them as
//! they are, and the broker shows them when it refuses the binding.

use std::fmt::Display;
use std::str::FromStr;

/// Parameters from the rules file, in the order written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Params {
    entries: Vec<(String, String)>,
}

impl Params {
    /// Wraps the list the host passed to `init`.
    pub fn new(entries: Vec<(String, String)>) -> Self {
        Params { entries }
    }

    /// Refuses names not in `allowed`, and names given twice.
    ///
    /// An allowed name ending in `.*` accepts any name with that prefix and a non-empty rest:
    /// `"route.*"` accepts `route.eu` but not `route.` or `route`.
    ///
    /// ```
    /// use quiver_plugin::Params;
    /// let p = Params::from([("n", "10"), ("colour", "red")]);
    /// let err = p.expect_only(&["n", "key"]).unwrap_err();
    /// assert_eq!(err, "unknown parameter `colour` (expected: n, key)");
    /// ```
    pub fn expect_only(&self, allowed: &[&str]) -> Result<(), String> {
        for (i, (name, _)) in self.entries.iter().enumerate() {
            if !allowed.iter().any(|pattern| name_matches(pattern, name)) {
                return Err(format!(
                    "unknown parameter `{name}` (expected: {})",
                    allowed.join(", ")
                ));
            }
            if self.entries[..i].iter().any(|(earlier, _)| earlier == name) {
                return Err(format!("parameter `{name}` is given more than once"));
            }
        }
        Ok(())
    }

    /// The value of `name`, if given (the first, if given twice).
    pub fn get(&self, name: &str) -> Option<&str> {
        self.entries
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The value of `name`, or an error saying it is missing.
    pub fn required(&self, name: &str) -> Result<&str, String> {
        self.get(name)
            .ok_or_else(|| format!("missing required parameter `{name}`"))
    }

    /// The value of `name` parsed as `T`: `Ok(None)` if absent, an error naming the parameter
    /// and the value if it does not parse.
    ///
    /// ```
    /// use quiver_plugin::Params;
    /// let p = Params::from([("n", "ten")]);
    /// assert_eq!(p.parse::<u64>("missing"), Ok(None));
    /// assert_eq!(
    ///     p.parse::<u64>("n").unwrap_err(),
    ///     "parameter `n`: bad value \"ten\": invalid digit found in string",
    /// );
    /// ```
    pub fn parse<T>(&self, name: &str) -> Result<Option<T>, String>
    where
        T: FromStr,
        T::Err: Display,
    {
        let Some(raw) = self.get(name) else {
            return Ok(None);
        };
        parse_value(name, raw).map(Some)
    }

    /// Like [`Params::parse`], with a default when absent.
    pub fn parse_or<T>(&self, name: &str, default: T) -> Result<T, String>
    where
        T: FromStr,
        T::Err: Display,
    {
        Ok(self.parse(name)?.unwrap_or(default))
    }

    /// Like [`Params::parse`], but absence is an error too.
    pub fn parse_required<T>(&self, name: &str) -> Result<T, String>
    where
        T: FromStr,
        T::Err: Display,
    {
        parse_value(name, self.required(name)?)
    }

    /// The entries named `<prefix>.<rest>`, as `(rest, value)`, in order. `rest` may itself
    /// contain dots: with prefix `route`, `route.eu.west` yields `eu.west`.
    pub fn prefixed<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a str, &'a str)> {
        self.entries.iter().filter_map(move |(name, value)| {
            let rest = name.strip_prefix(prefix)?.strip_prefix('.')?;
            (!rest.is_empty()).then_some((rest, value.as_str()))
        })
    }

    /// Every entry, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.entries.iter().map(|(n, v)| (n.as_str(), v.as_str()))
    }

    /// How many entries there are.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl From<Vec<(String, String)>> for Params {
    fn from(entries: Vec<(String, String)>) -> Self {
        Params::new(entries)
    }
}

impl<K: Into<String>, V: Into<String>, const N: usize> From<[(K, V); N]> for Params {
    fn from(entries: [(K, V); N]) -> Self {
        entries.into_iter().collect()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for Params {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Params::new(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

fn parse_value<T>(name: &str, raw: &str) -> Result<T, String>
where
    T: FromStr,
    T::Err: Display,
{
    raw.trim()
        .parse()
        .map_err(|e| format!("parameter `{name}`: bad value {raw:?}: {e}"))
}

fn name_matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix(".*") {
        Some(prefix) => name
            .strip_prefix(prefix)
            .and_then(|rest| rest.strip_prefix('.'))
            .is_some_and(|rest| !rest.is_empty()),
        None => pattern == name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expect_only_accepts_known_and_prefixed_names() {
        let p = Params::from([("header", "h"), ("route.eu", "a"), ("route.a.b", "b")]);
        assert_eq!(p.expect_only(&["header", "route.*"]), Ok(()));
    }

    #[test]
    fn expect_only_refuses_bare_prefix_and_duplicates() {
        let p = Params::from([("route.", "a")]);
        assert!(p.expect_only(&["route.*"]).is_err());
        let p = Params::from([("route", "a")]);
        assert!(p.expect_only(&["route.*"]).is_err());
        let p = Params::from([("n", "1"), ("n", "2")]);
        assert_eq!(
            p.expect_only(&["n"]),
            Err("parameter `n` is given more than once".to_owned())
        );
    }

    #[test]
    fn required_names_the_missing_parameter() {
        let p = Params::default();
        assert_eq!(
            p.required("expr"),
            Err("missing required parameter `expr`".to_owned())
        );
        assert_eq!(
            p.parse_required::<u32>("n"),
            Err("missing required parameter `n`".to_owned())
        );
    }

    #[test]
    fn parse_trims_and_defaults() {
        let p = Params::from([("n", " 7 ")]);
        assert_eq!(p.parse::<u32>("n"), Ok(Some(7)));
        assert_eq!(p.parse_or::<u32>("m", 3), Ok(3));
    }

    #[test]
    fn prefixed_yields_rest_in_order() {
        let p = Params::from([("bind.a.*", "x"), ("key", "k"), ("bind.#", "y")]);
        let got: Vec<_> = p.prefixed("bind").collect();
        assert_eq!(got, vec![("a.*", "x"), ("#", "y")]);
    }
}
