//! The relay's admin page, `GET /admin` (docs/operations.md, "Admin pages"): the backlog, this
//! instance's publish rate, confirm latency and circuit breakers, who holds which partition,
//! and the dead letters with Replay and Discard. Sign-in, CSRF and the HTML frame are
//! [`ordering_platform::http::admin`]'s; the dead-letter actions are the CLI's
//! ([`DeadLetters`]), so both behave the same.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use maud::{Markup, html};
use ordering_platform::breaker::{Breaker, BreakerState};
use ordering_platform::http::admin::{self, AdminGate, CsrfForm, Session, Verified, action_button};

use crate::leases::{self, Leases};
use crate::store::{Backlog, DeadLetterDetail, DeadLetters, Store, StoreError};

/// Dead letters shown on the page, oldest first (the total is shown too).
const SHOWN: i64 = 50;

/// Confirm latencies kept for the page's percentiles.
const LATENCY_SAMPLES: usize = 1024;

/// The span over which the publish rate is averaged, in one-second buckets.
const RATE_WINDOW: usize = 60;

/// This instance's recent publishing, for the page: confirms per second over the last minute
/// and the latency of the last [`LATENCY_SAMPLES`] confirms. (Prometheus has the same as
/// histograms and counters; this is what a person looking at one relay wants right now.)
#[derive(Debug)]
pub struct Activity {
    started: Instant,
    inner: Mutex<ActivityInner>,
}

#[derive(Debug, Default)]
struct ActivityInner {
    /// (second since start, confirms in that second), the last [`RATE_WINDOW`] seconds.
    seconds: VecDeque<(u64, u64)>,
    latencies: VecDeque<Duration>,
}

/// What [`Activity`] says now.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ActivitySummary {
    /// Confirms per second, averaged over the last minute (or since start if shorter).
    pub per_second: f64,
    /// Median, 99th percentile and maximum of the recent confirm latencies (`None` before any).
    pub latency: Option<(Duration, Duration, Duration)>,
    pub samples: usize,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            started: Instant::now(),
            inner: Mutex::default(),
        }
    }
}

impl Activity {
    /// Records one confirm that took `latency` from publish to ack.
    pub fn confirmed(&self, latency: Duration) {
        let now = self.started.elapsed().as_secs();
        let mut a = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        match a.seconds.back_mut() {
            Some((s, n)) if *s == now => *n += 1,
            _ => a.seconds.push_back((now, 1)),
        }
        while a.seconds.front().is_some_and(|(s, _)| *s + (RATE_WINDOW as u64) <= now) {
            a.seconds.pop_front();
        }
        if a.latencies.len() == LATENCY_SAMPLES {
            a.latencies.pop_front();
        }
        a.latencies.push_back(latency);
    }

    /// The rate and latencies now.
    pub fn summary(&self) -> ActivitySummary {
        let elapsed = self.started.elapsed();
        let now = elapsed.as_secs();
        let a = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let recent: u64 = a
            .seconds
            .iter()
            .filter(|(s, _)| *s + (RATE_WINDOW as u64) > now)
            .map(|(_, n)| n)
            .sum();
        let span = elapsed.as_secs_f64().clamp(1.0, RATE_WINDOW as f64);
        let mut sorted: Vec<Duration> = a.latencies.iter().copied().collect();
        sorted.sort_unstable();
        let at = |q: f64| sorted[((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1];
        ActivitySummary {
            per_second: recent as f64 / span,
            latency: (!sorted.is_empty()).then(|| (at(0.5), at(0.99), at(1.0))),
            samples: sorted.len(),
        }
    }
}

/// What the page reads from.
#[derive(Clone)]
pub struct AdminState {
    pub gate: AdminGate,
    pub store: Store,
    pub leases: Arc<Leases>,
    pub breakers: Vec<Arc<Breaker>>,
    pub activity: Arc<Activity>,
    pub exchange: String,
}

impl FromRef<AdminState> for AdminGate {
    fn from_ref(s: &AdminState) -> Self {
        s.gate.clone()
    }
}

/// `/admin` and its actions; with `None` (no `JWT_SECRET`), the page that says it is off.
pub fn router(state: Option<AdminState>) -> Router {
    admin::dead_letter_page(state, get(dashboard), post(replay), post(discard))
}

/// What the last action did.
type Done = admin::Done<i64>;

async fn dashboard(State(s): State<AdminState>, session: Session, Query(done): Query<Done>) -> Response {
    match read(&s).await {
        Ok(view) => admin::page(StatusCode::OK, "outbox-relay", render(&s, &session, &done, &view)),
        Err(e) => admin::page(
            StatusCode::SERVICE_UNAVAILABLE,
            "outbox-relay",
            html! { p.error { "Cannot read the relay's state: " (e) } },
        ),
    }
}

/// Everything the page shows from the database, read on each visit.
struct View {
    backlog: Backlog,
    partitions: Vec<leases::LeaseView>,
    letters: Vec<DeadLetterDetail>,
}

async fn read(s: &AdminState) -> Result<View, StoreError> {
    let backlog = s.store.backlog().await?;
    let partitions = leases::table(&s.store).await?;
    let mut conn = s.store.conn().await?;
    let mut dl = DeadLetters::new(&mut conn, s.store.names());
    let page = dl.list(Some(SHOWN)).await?;
    let mut letters = Vec::with_capacity(page.letters.len());
    for l in page.letters {
        // A letter replayed or discarded between the two reads is simply left out.
        if let Some(d) = dl.show(l.outbox_id).await? {
            letters.push(d);
        }
    }
    Ok(View {
        backlog,
        partitions,
        letters,
    })
}

fn render(s: &AdminState, session: &Session, done: &Done, v: &View) -> Markup {
    let me = s.leases.owner();
    let act = s.activity.summary();
    let mut owners: BTreeMap<Option<uuid::Uuid>, Vec<&leases::LeaseView>> = BTreeMap::new();
    for p in &v.partitions {
        owners.entry(p.owner).or_default().push(p);
    }
    html! {
        p {
            "Table " code { (s.store.names().table()) } ", exchange " code { (s.exchange) }
            ", this instance " code { (me) } ". Signed in as " code { (session.caller.subject) } ". "
            (action_button(session, "/admin/logout", "Sign out"))
        }
        @if let Some(id) = done.replayed { p.notice { "Row " (id) " replayed: it is published again shortly." } }
        @if let Some(id) = done.discarded { p.notice { "Row " (id) " discarded: it will never be published." } }
        @if let Some(id) = done.missing { p.notice.warn { "Row " (id) " is no longer a dead letter." } }

        h2 { "Backlog (whole table)" }
        table {
            tr { th { "Unsent rows" } td id="pending" { (v.backlog.pending) } }
            tr { th { "Oldest unsent row" } td id="oldest" { (age(v.backlog.lag)) } }
            tr { th { "Dead letters" } td id="dead-letters" { (v.backlog.dead_letters) } }
        }

        h2 { "This instance" }
        table {
            tr { th { "Publish rate" } td id="rate" { (format!("{:.2}", act.per_second)) " confirmed rows/s (last minute)" } }
            tr {
                th { "Confirm latency" }
                td id="latency" {
                    @match act.latency {
                        Some((p50, p99, max)) => { "p50 " (ms(p50)) ", p99 " (ms(p99)) ", max " (ms(max)) " (last " (act.samples) " confirms)" }
                        None => { "no confirm yet" }
                    }
                }
            }
            @for b in &s.breakers {
                tr {
                    th { "Breaker " (b.name()) }
                    @let state = b.state();
                    td class=(if state == BreakerState::Closed { "ok" } else { "error" }) { (breaker(state)) }
                }
            }
        }

        h2 { "Partitions" }
        table id="partitions" {
            tr { th { "Owner" } th { "Partitions" } th { "Count" } }
            @for (owner, parts) in &owners {
                tr {
                    td {
                        @match owner {
                            Some(o) if *o == me => { code { (o) } " (this instance)" }
                            Some(o) => { code { (o) } }
                            None => { span.warn { "nobody (free or expired)" } }
                        }
                    }
                    td { (parts.iter().map(|p| p.partition.to_string()).collect::<Vec<_>>().join(", ")) }
                    td { (parts.len()) }
                }
            }
        }

        h2 { "Dead letters" }
        @if v.letters.is_empty() {
            p id="no-dead-letters" { "None." }
        } @else {
            p { "Oldest first; " (v.letters.len()) " of " (v.backlog.dead_letters) " shown. A dead letter blocks the later events of its aggregate until it is replayed (fix its cause first) or discarded (never published)." }
            table id="dead-letter-list" {
                tr { th { "Row" } th { "Event" } th { "Attempts" } th { "Last error" } th { "Payload" } th { "" } }
                @for d in &v.letters {
                    @let l = &d.letter;
                    tr id=(format!("dead-letter-{}", l.outbox_id)) {
                        td { (l.outbox_id) }
                        td {
                            code { (l.event_type) } br;
                            (l.aggregate_type) " " code { (l.aggregate_id) } " #" (l.sequence) br;
                            "event " code { (l.event_id) } br;
                            "dead since " (l.dead_at.format("%Y-%m-%d %H:%M:%S UTC"))
                        }
                        td.attempts { (l.attempts) }
                        td.last-error { (l.last_error) }
                        td {
                            pre.payload { (pretty(d.payload.as_ref())) }
                            details { summary { "headers" } pre { (pretty(d.headers.as_ref())) } }
                        }
                        td {
                            (action_button(session, &format!("/admin/dead-letters/{}/replay", l.outbox_id), "Replay"))
                            (action_button(session, &format!("/admin/dead-letters/{}/discard", l.outbox_id), "Discard"))
                        }
                    }
                }
            }
        }
    }
}

async fn replay(
    State(s): State<AdminState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    form: axum::Form<CsrfForm>,
) -> Response {
    resolve(&s, id, &headers, &form.0, true).await
}

async fn discard(
    State(s): State<AdminState>,
    Path(id): Path<i64>,
    headers: HeaderMap,
    form: axum::Form<CsrfForm>,
) -> Response {
    resolve(&s, id, &headers, &form.0, false).await
}

/// Replays or discards dead letter `id`, then back to the page (post/redirect/get).
async fn resolve(s: &AdminState, id: i64, headers: &HeaderMap, form: &CsrfForm, replay: bool) -> Response {
    let Verified(session) = match Verified::check(&s.gate, headers, form) {
        Ok(v) => v,
        Err(r) => return r,
    };
    let done = async {
        let mut conn = s.store.conn().await?;
        let mut dl = DeadLetters::new(&mut conn, s.store.names());
        if replay {
            dl.replay(Some(id)).await
        } else {
            dl.discard(id).await
        }
    }
    .await;
    let verb = if replay { "replayed" } else { "discarded" };
    match done {
        Ok(0) => Redirect::to(&format!("/admin?missing={id}")).into_response(),
        Ok(_) => {
            tracing::info!(outbox_id = id, admin = %session.caller.subject, "dead letter {verb} from the admin page");
            Redirect::to(&format!("/admin?{verb}={id}")).into_response()
        }
        Err(e) => admin::page(
            StatusCode::SERVICE_UNAVAILABLE,
            "outbox-relay",
            html! { p.error { "Row " (id) " was not " (verb) ": " (e) } },
        ),
    }
}

fn breaker(s: BreakerState) -> &'static str {
    match s {
        BreakerState::Closed => "closed",
        BreakerState::HalfOpen => "half-open (probing)",
        BreakerState::Open => "open (calls refused)",
    }
}

fn age(secs: f64) -> String {
    match secs {
        s if s <= 0.0 => "none".into(),
        s if s < 120.0 => format!("{s:.1} s"),
        s if s < 7200.0 => format!("{:.1} min", s / 60.0),
        s => format!("{:.1} h", s / 3600.0),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn pretty(v: Option<&serde_json::Value>) -> String {
    v.map_or_else(
        || "(the outbox row is gone)".to_owned(),
        |v| serde_json::to_string_pretty(v).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn activity_rates_and_percentiles() {
        let a = Activity::default();
        assert_eq!(a.summary().latency, None);
        for ms in 1..=100 {
            a.confirmed(Duration::from_millis(ms));
        }
        let s = a.summary();
        assert_eq!(s.samples, 100);
        assert_eq!(
            s.latency,
            Some((
                Duration::from_millis(50),
                Duration::from_millis(99),
                Duration::from_millis(100)
            ))
        );
        // 100 confirms in the first second, averaged over at least one second.
        assert!(s.per_second > 0.0 && s.per_second <= 100.0, "{s:?}");
    }

    #[test]
    fn latency_samples_are_bounded() {
        let a = Activity::default();
        for _ in 0..LATENCY_SAMPLES + 10 {
            a.confirmed(Duration::from_millis(1));
        }
        assert_eq!(a.summary().samples, LATENCY_SAMPLES);
    }
}
