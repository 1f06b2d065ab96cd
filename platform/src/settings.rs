//! Typed settings from environment variables, with one clear line for a bad one.
//!
//! Each binary has one settings struct built with these helpers; a bad value stops the
//! service at start with exit status 2 and a line naming the setting (docs/operations.md,
//! "Settings").

use std::fmt::Display;
use std::str::FromStr;
use std::time::Duration;

/// A setting that is missing or cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("bad setting {name}: {message}")]
pub struct SettingError {
    pub name: &'static str,
    pub message: String,
}

impl SettingError {
    pub fn new(name: &'static str, message: impl Into<String>) -> Self {
        Self {
            name,
            message: message.into(),
        }
    }

    /// Prints the one line naming the setting and stops the process with status 2.
    pub fn exit(&self) -> ! {
        eprintln!("{self}");
        std::process::exit(2)
    }
}

/// The raw value of `name`, if set and not empty.
pub fn raw(name: &'static str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `name` as a string, or `default` when unset.
pub fn string(name: &'static str, default: &str) -> String {
    raw(name).unwrap_or_else(|| default.to_owned())
}

/// `name` parsed with `FromStr`, or `default` when unset.
pub fn parsed<T>(name: &'static str, default: T) -> Result<T, SettingError>
where
    T: FromStr,
    T::Err: Display,
{
    match raw(name) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|e| SettingError::new(name, format!("{v:?} is not valid: {e}"))),
    }
}

/// A duration written as a number with a unit: `250ms`, `30s`, `5m`, `12h`, `7d`.
pub fn duration(name: &'static str, default: Duration) -> Result<Duration, SettingError> {
    match raw(name) {
        None => Ok(default),
        Some(v) => parse_duration(&v)
            .ok_or_else(|| SettingError::new(name, format!("{v:?} is not a duration like 250ms, 30s, 5m, 12h or 7d"))),
    }
}

/// Parses `250ms`, `30s`, `5m`, `12h`, `7d` (a bare number is seconds).
pub fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let n: u64 = num.parse().ok()?;
    let secs = |m: u64| n.checked_mul(m).map(Duration::from_secs);
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => secs(1),
        "m" => secs(60),
        "h" => secs(3600),
        "d" => secs(86_400),
        _ => None,
    }
}

/// A socket address setting.
pub fn socket_addr(name: &'static str, default: &str) -> Result<std::net::SocketAddr, SettingError> {
    let v = string(name, default);
    v.parse()
        .map_err(|_| SettingError::new(name, format!("{v:?} is not a host:port address like 127.0.0.1:8080")))
}

/// A URL setting that must start with one of `schemes` (e.g. `postgres://`).
pub fn url(name: &'static str, default: &str, schemes: &[&str]) -> Result<String, SettingError> {
    let v = string(name, default);
    if schemes.iter().any(|s| v.starts_with(s)) {
        Ok(v)
    } else {
        Err(SettingError::new(
            name,
            format!("must be a URL starting with {}", schemes.join(" or ")),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("5 m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("soon"), None);
        assert_eq!(parse_duration("3w"), None);
        assert_eq!(parse_duration("99999999999999999999d"), None);
    }
}
