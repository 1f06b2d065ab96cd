//! What the three binaries share on their command line: parsing before any setting is read,
//! the settings listing of `--help`, and the exit codes (0 ok, 2 usage error or bad setting,
//! 1 runtime failure), each failure as one line without a backtrace.
//!
//! Settings stay read from the environment by each binary's `Settings::from_env`; the table a
//! binary passes to [`settings_help`] sits next to that loader and is the one listing of its
//! settings' names, defaults and meanings that `--help` shows.

use std::fmt::Write as _;
use std::process::ExitCode;

use clap::Parser;
use clap::error::ErrorKind;

/// One environment setting as `--help` lists it.
pub struct Setting {
    pub name: &'static str,
    pub default: &'static str,
    pub about: &'static str,
}

/// Settings every binary reads.
pub const COMMON_SETTINGS: &[Setting] = &[
    Setting {
        name: "DATABASE_URL",
        default: "postgres://root@127.0.0.1:5432/ordering",
        about: "PostgreSQL",
    },
    Setting {
        name: "RUST_LOG",
        default: "info",
        about: "log filter",
    },
    Setting {
        name: "LOG_FORMAT",
        default: "pretty on a terminal, else json",
        about: "json or pretty",
    },
    Setting {
        name: "ACCESS_LOG_LEVEL",
        default: "info",
        about: "level of the one access log line per request (off, error, warn, info, debug, trace)",
    },
    Setting {
        name: "OTEL_EXPORTER_OTLP_ENDPOINT",
        default: "unset: no tracing",
        about: "OTLP/HTTP collector (spans to <it>/v1/traces), e.g. http://collector:4318",
    },
    Setting {
        name: "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        default: "unset",
        about: "the full traces URL instead (http://collector:4318/v1/traces)",
    },
    Setting {
        name: "OTEL_SDK_DISABLED",
        default: "false",
        about: "true: no tracing even with an endpoint",
    },
    Setting {
        name: "OTEL_SERVICE_NAME",
        default: "the binary's name",
        about: "service.name of the spans",
    },
    Setting {
        name: "OTEL_TRACES_SAMPLER",
        default: "parentbased_always_on",
        about: "always_on, always_off, traceidratio, parentbased_*",
    },
    Setting {
        name: "OTEL_TRACES_SAMPLER_ARG",
        default: "1.0",
        about: "the ratio of the *traceidratio samplers",
    },
    Setting {
        name: "OTEL_BSP_SCHEDULE_DELAY",
        default: "5000",
        about: "milliseconds between span exports",
    },
];

/// The broker, for the binaries that use one.
pub const AMQP_SETTINGS: &[Setting] = &[
    Setting {
        name: "AMQP_URL",
        default: "amqp://guest:guest@127.0.0.1:5672/%2f",
        about: "RabbitMQ; a cluster's nodes separated by commas (amqp://h1:5672/%2f,amqp://h2:5672/%2f), tried in turn",
    },
    Setting {
        name: "AMQP_REPLICATION_FACTOR",
        default: "3",
        about: "nodes holding each queue and stream the service declares (capped at the cluster's size)",
    },
];

/// The bearer-token settings of both APIs (`auth::Authenticator::from_env`).
pub const AUTH_SETTINGS: &[Setting] = &[
    Setting {
        name: "JWT_SECRET",
        default: "required unless AUTH=off",
        about: "HS256 key, its bytes as given (at least 16)",
    },
    Setting {
        name: "AUTH",
        default: "on",
        about: "off treats every caller as an admin (demos only)",
    },
    Setting {
        name: "JWT_AUDIENCE",
        default: "unset",
        about: "when set, tokens must carry this aud",
    },
    Setting {
        name: "JWT_ISSUER",
        default: "unset",
        about: "when set, tokens must carry this iss",
    },
    Setting {
        name: "CONSISTENCY_SECRET",
        default: "= JWT_SECRET",
        about: "signs consistency tokens (the same on both APIs)",
    },
];

/// The admin page's settings, for a binary whose only use of tokens is its admin page
/// (`http::admin::AdminGate::from_env`).
pub const ADMIN_SETTINGS: &[Setting] = &[
    Setting {
        name: "JWT_SECRET",
        default: "unset: no admin page",
        about: "HS256 key of the admin tokens that sign in to /admin (at least 16 bytes)",
    },
    Setting {
        name: "JWT_AUDIENCE",
        default: "unset",
        about: "when set, admin tokens must carry this aud",
    },
    Setting {
        name: "JWT_ISSUER",
        default: "unset",
        about: "when set, admin tokens must carry this iss",
    },
];

/// The `after_help` text listing `groups` of settings, and the exit codes.
pub fn settings_help(groups: &[&[Setting]]) -> String {
    let all = groups.iter().flat_map(|g| g.iter());
    let width = all.clone().map(|s| s.name.len()).max().unwrap_or(0);
    let mut out = String::from("Settings (environment variables) [default]:\n");
    for s in all {
        let _ = writeln!(out, "  {:width$}  {} [{}]", s.name, s.about, s.default);
    }
    out.push_str("\nExit status: 0 ok, 2 usage error or bad setting, 1 runtime failure.");
    out
}

/// Parses the command line; `--help` and `--version` print and exit 0, a usage error prints
/// one line and exits 2 (a command group given without its subcommand prints its help).
pub fn parse<T: Parser>() -> T {
    T::try_parse().unwrap_or_else(|e| match e.kind() {
        // A command group without its subcommand (`dlq`): its help, listing them, with status 2.
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            e.exit()
        }
        _ => {
            // clap's first paragraph says what is wrong (and e.g. the possible values); the
            // usage and tips after it are what `--help` shows.
            let rendered = e.render().to_string();
            let what: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            eprintln!("{} (see {} --help)", what.join(" "), T::command().get_name());
            std::process::exit(2)
        }
    })
}

/// The exit status of a finished command: a failure is printed as one line (with its causes),
/// never with a backtrace, and exits 1.
pub fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes on one line, each cause once: many error types already quote their
/// source in their own message (`database error: {0}`), and printing the chain as well said
/// everything twice.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[derive(Debug, thiserror::Error)]
    #[error("database error: {0}")]
    struct Quoting(#[source] std::io::Error);

    #[test]
    fn a_cause_already_quoted_is_not_repeated() {
        let e = anyhow::Error::new(Quoting(std::io::Error::other("permission denied")));
        assert_eq!(one_line(&e), "database error: permission denied");
        let e = anyhow::Error::new(std::io::Error::other("refused")).context("connect to PostgreSQL");
        assert_eq!(one_line(&e), "connect to PostgreSQL: refused");
    }
}
