//! Structured logs: `RUST_LOG` filters, `LOG_FORMAT=json|pretty` picks the shape (pretty on a
//! terminal, JSON otherwise, so logs shipped from a container are machine-readable).

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::settings::{self, SettingError};

/// Installs the global tracing subscriber and reads the access log's level
/// (`ACCESS_LOG_LEVEL`). Call once, first thing in `main`.
pub fn init() -> Result<(), SettingError> {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new("info"))
        .map_err(|e| SettingError::new("RUST_LOG", e.to_string()))?;
    let json = match settings::raw("LOG_FORMAT").as_deref() {
        None => !std::io::stdout().is_terminal(),
        Some("json") => true,
        Some("pretty") => false,
        Some(other) => {
            return Err(SettingError::new(
                "LOG_FORMAT",
                format!("{other:?} is not json or pretty"),
            ));
        }
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(true);
    if json {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init();
    } else {
        builder.init();
    }
    crate::http::access_log::init()
}
