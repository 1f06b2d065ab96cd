//! The access log: one line per request (method, route template, status, latency in ms),
//! logged inside the request's span, so it carries that span's request id and trace id.
//! Its level is the `ACCESS_LOG_LEVEL` setting (`info` by default, `off` to silence it).

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{Method, StatusCode};
use tracing::Level;

use crate::settings::{self, SettingError};

static LEVEL: OnceLock<Option<Level>> = OnceLock::new();

/// Reads `ACCESS_LOG_LEVEL` (`off`, `error`, `warn`, `info`, `debug`, `trace`); a bad value is
/// a setting error. Without a call, the access log is at `info`.
pub fn init() -> Result<(), SettingError> {
    let level = match settings::raw("ACCESS_LOG_LEVEL") {
        None => Some(Level::INFO),
        Some(v) if v.trim().eq_ignore_ascii_case("off") => None,
        Some(v) => Some(v.trim().parse::<Level>().map_err(|_| {
            SettingError::new(
                "ACCESS_LOG_LEVEL",
                format!("{v:?} is not off, error, warn, info, debug or trace"),
            )
        })?),
    };
    let _ = LEVEL.set(level);
    Ok(())
}

/// Logs one answered request at the configured level.
pub fn log(method: &Method, route: &str, status: StatusCode, elapsed: Duration) {
    // `tracing`'s macros need the level as a constant: one arm per level.
    macro_rules! line {
        ($level:expr) => {
            tracing::event!(
                target: "access",
                $level,
                method = %method,
                route,
                status = status.as_u16(),
                latency_ms = elapsed.as_secs_f64() * 1000.0,
                "request answered"
            )
        };
    }
    match LEVEL.get_or_init(|| Some(Level::INFO)) {
        None => {}
        Some(l) if *l == Level::ERROR => line!(Level::ERROR),
        Some(l) if *l == Level::WARN => line!(Level::WARN),
        Some(l) if *l == Level::INFO => line!(Level::INFO),
        Some(l) if *l == Level::DEBUG => line!(Level::DEBUG),
        Some(_) => line!(Level::TRACE),
    }
}
