//! The services' one retry schedule: exponential with jitter, from a first delay up to a
//! ceiling, never giving up (reconnecting to a dependency, retrying a transient failure). The
//! callers decide when to stop (shutdown, a failure that is not transient) and reset it after
//! a success.

use std::time::Duration;

use backon::ExponentialBuilder;

/// Delays from `min` doubling up to `max`, jittered so that instances do not retry in step.
pub fn endless(min: Duration, max: Duration) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_jitter()
        .with_min_delay(min)
        .with_max_delay(max)
        .without_max_times()
}
