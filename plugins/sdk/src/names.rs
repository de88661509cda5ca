//! Channel and topic names in parameters: comma-separated lists, checked with the broker's
//! rules, so that a router refuses a bad name at `init` instead of routing to it.
//!
//! The rules (as the broker's): 1 to 64 bytes of `A-Z a-z 0-9 . _ -`, optionally followed by
//! `#ephemeral` (counted in the 64), and not `.` or `..`.

/// Longest name, in bytes, `#ephemeral` included.
pub const MAX_NAME_LEN: usize = 64;

const EPHEMERAL_SUFFIX: &str = "#ephemeral";

/// Checks one name; `kind` ("channel" or "topic") is only for the message.
pub fn check(kind: &str, name: &str) -> Result<(), String> {
    let base = name.strip_suffix(EPHEMERAL_SUFFIX).unwrap_or(name);
    let why = if base.is_empty() {
        "must not be empty"
    } else if !base
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        "only A-Z, a-z, 0-9, '.', '_' and '-' are allowed"
    } else if name == "." || name == ".." {
        "must not be '.' or '..'"
    } else if name.len() > MAX_NAME_LEN {
        "longer than 64 bytes"
    } else {
        return Ok(());
    };
    Err(format!("{kind} {name:?}: {why}"))
}

/// Parses the value of parameter `param` as a comma-separated list of channel names. Spaces
/// around names are ignored, repeats are dropped, and an empty (or all-blank) value is an
/// empty list.
///
/// ```
/// use quiver_plugin::names;
/// assert_eq!(names::channels("route.eu", " a, b,a "), Ok(vec!["a".to_owned(), "b".to_owned()]));
/// assert_eq!(names::channels("default", ""), Ok(vec![]));
/// assert_eq!(
///     names::channels("route.eu", "a,,b").unwrap_err(),
///     "parameter `route.eu`: channel \"\": must not be empty",
/// );
/// ```
pub fn channels(param: &str, value: &str) -> Result<Vec<String>, String> {
    list("channel", param, value)
}

/// Like [`channels`], for topic names.
pub fn topics(param: &str, value: &str) -> Result<Vec<String>, String> {
    list("topic", param, value)
}

fn list(kind: &str, param: &str, value: &str) -> Result<Vec<String>, String> {
    if value.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut names: Vec<String> = Vec::new();
    for name in value.split(',').map(str::trim) {
        check(kind, name).map_err(|e| format!("parameter `{param}`: {e}"))?;
        if !names.iter().any(|n| n == name) {
            names.push(name.to_owned());
        }
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_broker_rules() {
        assert_eq!(check("channel", "archive#ephemeral"), Ok(()));
        assert_eq!(check("topic", "orders.eu-west_1"), Ok(()));
        assert!(check("channel", "#ephemeral").is_err());
        assert!(check("channel", "..").is_err());
        assert!(check("channel", "a b").is_err());
        assert!(check("channel", &"x".repeat(65)).is_err());
        assert_eq!(check("channel", &"x".repeat(64)), Ok(()));
    }

    #[test]
    fn lists_name_the_parameter() {
        assert_eq!(
            topics("forward.eu", "audit, bad name"),
            Err("parameter `forward.eu`: topic \"bad name\": only A-Z, a-z, 0-9, '.', '_' and '-' are allowed".to_owned())
        );
    }
}
