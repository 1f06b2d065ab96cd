//! The read-api's admin page, `GET /admin` (docs/operations.md, "Admin pages"): the
//! projector's queue, the parked events and their gaps, the dead letters with Replay and
//! Discard, and this instance's cache. Sign-in, CSRF and the HTML frame are
//! [`ordering_platform::http::admin`]'s, as on the relay; the dead-letter actions are the CLI's
//! ([`DeadLetterQueue::resolve`]), so both behave the same.
//!
//! Each part is read on its own: a broker or database that cannot be reached turns that part
//! of the page into an error line, never the whole page into an error.
//!
//! Reading a quorum queue means taking its messages and putting copies back (see
//! [`crate::dead_letters`]), so the page's listing moves what it shows to the back of the
//! queue. Visits and actions of one instance take turns ([`AdminState::queue_turn`]), so two
//! open pages never see each other's copies.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{FromRef, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::Utc;
use maud::{Markup, html};
use ordering_platform::breaker::BreakerState;
use ordering_platform::http::admin::{self, AdminGate, CsrfForm, Session, Verified, action_button};

use crate::app::AppState;
use crate::cache::CacheStats;
use crate::dead_letters::{DeadLetter, DeadLetterError, DeadLetterQueue, Disposition, QueueDepth};
use crate::projector::parking::{self, Gap};

/// Dead letters and gaps shown on the page (the totals are shown too).
const SHOWN: usize = 50;

/// What the page reads from.
#[derive(Clone)]
pub struct AdminState {
    pub gate: AdminGate,
    pub app: AppState,
    pub amqp: ordering_platform::amqp::AmqpNodes,
    /// `PROJECTOR_QUEUE` (its dead letters are in `<queue>.dead`).
    pub queue: String,
    /// Whether this instance runs the projector (`PROJECTOR`).
    pub projector: bool,
    pub gap_timeout: Duration,
    /// Held while the page takes and puts back dead letters.
    pub queue_turn: Arc<tokio::sync::Mutex<()>>,
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
type Done = admin::Done<String>;

/// The broker's part of the page.
struct Broker {
    queue: QueueDepth,
    dead: QueueDepth,
    letters: Vec<DeadLetter>,
}

/// The parking's part of the page.
struct Parking {
    events: i64,
    gaps: i64,
    oldest: Vec<Gap>,
}

async fn dashboard(State(s): State<AdminState>, session: Session, Query(done): Query<Done>) -> Response {
    let (broker, parking) = tokio::join!(read_broker(&s), read_parking(&s));
    admin::page(
        StatusCode::OK,
        "read-api",
        render(&s, &session, &done, &broker, &parking, &s.app.cache.stats()),
    )
}

async fn read_broker(s: &AdminState) -> Result<Broker, DeadLetterError> {
    let _turn = s.queue_turn.lock().await;
    let dlq = DeadLetterQueue::open(&s.amqp, &s.queue).await?;
    let read = async {
        let queue = dlq.depth(dlq.projector_queue()).await?;
        let dead = dlq.depth(dlq.name()).await?;
        let letters = dlq
            .sweep(SHOWN, |_| Disposition::Keep)
            .await?
            .into_iter()
            .map(|(d, _)| d)
            .collect();
        Ok(Broker { queue, dead, letters })
    }
    .await;
    dlq.close().await;
    read
}

async fn read_parking(s: &AdminState) -> Result<Parking, String> {
    let mut conn = s.app.pool.get().await.map_err(|e| e.to_string())?;
    let (events, gaps) = parking::count(&mut conn).await.map_err(|e| e.to_string())?;
    let oldest = parking::gaps(&mut conn, SHOWN as i64)
        .await
        .map_err(|e| e.to_string())?;
    Ok(Parking { events, gaps, oldest })
}

fn render(
    s: &AdminState,
    session: &Session,
    done: &Done,
    broker: &Result<Broker, DeadLetterError>,
    parking: &Result<Parking, String>,
    cache: &CacheStats,
) -> Markup {
    let dead_queue = format!("{}.dead", s.queue);
    html! {
        p {
            "Projector queue " code { (s.queue) } ", dead letters in " code { (dead_queue) }
            ". Signed in as " code { (session.caller.subject) } ". "
            (action_button(session, "/admin/logout", "Sign out"))
        }
        @if let Some(id) = &done.replayed { p.notice { "Dead letter " code { (id) } " replayed: the projector applies it shortly." } }
        @if let Some(id) = &done.discarded { p.notice { "Dead letter " code { (id) } " discarded." } }
        @if let Some(id) = &done.missing { p.notice.warn { "No dead letter " code { (id) } " any more." } }

        h2 { "Projector" }
        table {
            tr {
                th { "This instance" }
                td id="projector" {
                    @match (s.projector, s.app.broker_connected.as_ref().map(|f| f.load(std::sync::atomic::Ordering::Relaxed))) {
                        (false, _) => { "not projecting (" code { "PROJECTOR=off" } "): it serves queries only" }
                        (true, Some(false)) => { span.error { "projecting, but not connected to the broker: the views may lag" } }
                        (true, _) => { span.ok { "projecting" } }
                    }
                }
            }
            @match broker {
                Ok(b) => {
                    tr { th { "Queue depth" } td id="queue-depth" { (b.queue.messages) } }
                    tr { th { "Consumers" } td id="queue-consumers" { (b.queue.consumers) } }
                }
                Err(e) => { tr { th { "Queue depth" } td.error id="queue-depth" { "cannot read the broker: " (e) } } }
            }
        }
        p { "Queue depth counts the events waiting to be delivered; each consumer also holds up to "
            code { "PROJECTOR_PREFETCH" } " delivered and not yet applied." }

        h2 { "Parked events and gaps" }
        @match parking {
            Ok(p) => {
                table {
                    tr { th { "Parked events" } td id="parked" { (p.events) } }
                    tr { th { "Gaps" } td id="gaps" { (p.gaps) } }
                    tr { th { "GAP_TIMEOUT" } td { (secs(s.gap_timeout)) } }
                }
                @if let Some(report) = s.app.gap_report.as_ref().and_then(|(r, q)| r.detail(q)) {
                    p.error id="gap-report" { (report) }
                }
                @if p.oldest.is_empty() {
                    p id="no-gaps" { "None: every event received was applied in order." }
                } @else {
                    p { "Oldest first; " (p.oldest.len()) " of " (p.gaps) " shown. An event is parked when its predecessor has not arrived; it is applied as soon as that does. A gap older than GAP_TIMEOUT goes to the dead letters below. If this instance started on an empty view database while the stream has history, run " code { "read-api rebuild" } "." }
                    table id="gap-list" {
                        tr { th { "Aggregate" } th { "View at" } th { "Missing" } th { "Parked" } th { "Parked since" } th { "Times out" } }
                        @for g in &p.oldest {
                            @let waited = (Utc::now() - g.since).to_std().unwrap_or_default();
                            tr id=(format!("gap-{}", g.id)) {
                                td { (g.aggregate) " " code { (g.id) } }
                                td { "version " (g.have) }
                                td { "version " (g.have + 1) }
                                td { (g.events) " (versions " (g.first) " to " (g.last) ")" }
                                td { (g.since.format("%Y-%m-%d %H:%M:%S UTC")) }
                                td { @if waited >= s.gap_timeout { "now" } @else { "in " (secs(s.gap_timeout - waited)) } }
                            }
                        }
                    }
                }
            }
            Err(e) => { p.error id="parked" { "Cannot read the parking: " (e) } }
        }

        h2 { "Dead letters" }
        @match broker {
            Err(e) => { p.error { "Cannot read " code { (dead_queue) } ": " (e) } }
            Ok(b) if b.letters.is_empty() => { p id="no-dead-letters" { "None." } }
            Ok(b) => {
                p {
                    (b.letters.len()) " of " span id="dead-letters" { (b.dead.messages) } " shown. "
                    "Reading a quorum queue means taking its messages and putting them back, so each visit shows the next ones. "
                    "Replay sends one to the projector again (fix its cause first); Discard drops it for good. "
                    "Messages with the same event and body share an id and are handled together."
                }
                table id="dead-letter-list" {
                    tr { th { "Id" } th { "Event" } th { "Reason" } th { "Body" } th { "" } }
                    @for d in &b.letters {
                        tr id=(format!("dead-letter-{}", d.id)) {
                            td { code { (d.id) } }
                            td {
                                code { (d.event_type.as_deref().unwrap_or(&d.routing_key)) } br;
                                @if let Some(a) = &d.aggregate_id { code { (a) } }
                                @if let Some(v) = d.sequence { " #" (v) }
                                @if let Some(t) = d.dead_at { br; "dead since " (t.format("%Y-%m-%d %H:%M:%S UTC")) }
                            }
                            td.reason { (d.reason) }
                            td {
                                pre.body { (pretty(&d.body)) }
                                details { summary { "headers" } pre { @for (k, v) in &d.headers { (k) ": " (v) "\n" } } }
                            }
                            td {
                                (action_button(session, &format!("/admin/dead-letters/{}/replay", d.id), "Replay"))
                                (action_button(session, &format!("/admin/dead-letters/{}/discard", d.id), "Discard"))
                            }
                        }
                    }
                }
            }
        }

        h2 { "Cache (this instance, since it started)" }
        table {
            tr {
                th { "Hit ratio" }
                td id="hit-ratio" {
                    @match cache.hit_ratio() {
                        Some(r) => { (format!("{:.1}%", r * 100.0)) }
                        None => { "no lookup yet" }
                    }
                }
            }
            tr { th { "In-process hits" } td id="local-hits" { (cache.local_hits) } }
            tr { th { "Redis hits" } td id="redis-hits" { (cache.redis_hits) } }
            tr { th { "Misses (read from PostgreSQL)" } td id="misses" { (cache.misses) } }
            tr {
                th { "Redis" }
                td class=(if cache.redis == BreakerState::Closed { "ok" } else { "error" }) {
                    @match cache.redis {
                        BreakerState::Closed => { "in use" }
                        BreakerState::HalfOpen => { "probing after a failure" }
                        BreakerState::Open => { "paused after a failure: reads go to PostgreSQL" }
                    }
                }
            }
        }
    }
}

async fn replay(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: axum::Form<CsrfForm>,
) -> Response {
    resolve(&s, &id, &headers, &form.0, Disposition::Replay).await
}

async fn discard(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    headers: HeaderMap,
    form: axum::Form<CsrfForm>,
) -> Response {
    resolve(&s, &id, &headers, &form.0, Disposition::Discard).await
}

/// Replays or discards the dead letters with `id`, then back to the page (post/redirect/get).
async fn resolve(s: &AdminState, id: &str, headers: &HeaderMap, form: &CsrfForm, what: Disposition) -> Response {
    let Verified(session) = match Verified::check(&s.gate, headers, form) {
        Ok(v) => v,
        Err(r) => return r,
    };
    // Ids are 12 hex digits; anything else names no dead letter (and must not reach the URL).
    if id.len() != 12 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Redirect::to("/admin?missing=").into_response();
    }
    let verb = if what == Disposition::Replay {
        "replayed"
    } else {
        "discarded"
    };
    let done = async {
        let _turn = s.queue_turn.lock().await;
        let dlq = DeadLetterQueue::open(&s.amqp, &s.queue).await?;
        let n = dlq.resolve(Some(id), what).await;
        dlq.close().await;
        n
    }
    .await;
    match done {
        Err(DeadLetterError::Unknown { .. }) => Redirect::to(&format!("/admin?missing={id}")).into_response(),
        Ok(n) => {
            tracing::info!(dead_letter = id, messages = n, admin = %session.caller.subject, "dead letter {verb} from the admin page");
            Redirect::to(&format!("/admin?{verb}={id}")).into_response()
        }
        Err(e) => admin::page(
            StatusCode::SERVICE_UNAVAILABLE,
            "read-api",
            html! { p.error { "Dead letter " code { (id) } " was not " (verb) ": " (e) } },
        ),
    }
}

fn secs(d: Duration) -> String {
    match d.as_secs() {
        s if s < 120 => format!("{s} s"),
        s if s < 7200 => format!("{:.1} min", s as f64 / 60.0),
        s => format!("{:.1} h", s as f64 / 3600.0),
    }
}

fn pretty(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        json => serde_json::to_string_pretty(json).unwrap_or_default(),
    }
}
