//! One trace per command across the three processes: the services export to an OTLP/HTTP
//! receiver inside the test ([`OtlpReceiver`], decoding with `opentelemetry-proto`), and one
//! place-order must come back as one trace, from the write-api's server span through the
//! relay's publish spans to the projector's apply spans, each the parent of the next; a
//! refused command's trace ends in an error.

use std::collections::HashSet;
use std::time::Duration;

use lapin::types::AMQPValue;
use ordering_tests::otlp::{KIND_CONSUMER, KIND_PRODUCER, KIND_SERVER, OtlpReceiver, ReceivedSpan, STATUS_ERROR};
use ordering_tests::pipeline::{Pipeline, PipelineOptions};
use ordering_tests::write_app::{admin_token, customer_token};
use serde_json::{Value, json};
use uuid::Uuid;

const WAIT: Duration = Duration::from_secs(20);

/// A caller's W3C context: a random trace id and parent span id.
fn caller_context() -> (String, String) {
    let trace = Uuid::new_v4().simple().to_string();
    let parent = trace[..16].chars().rev().collect::<String>();
    (trace, parent)
}

async fn post(p: &Pipeline, path: &str, token: &str, traceparent: &str, body: Value) -> (u16, Value) {
    let res = p
        .client
        .post(p.write_api.url(path))
        .bearer_auth(token)
        .header("traceparent", traceparent)
        .header("tracestate", "e2e=1")
        .json(&body)
        .send()
        .await
        .expect("command");
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

fn named<'a>(spans: &'a [ReceivedSpan], service: &str, name: &str) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect()
}

fn of_kind<'a>(spans: &'a [ReceivedSpan], service: &str, kind: i32) -> Vec<&'a ReceivedSpan> {
    spans
        .iter()
        .filter(|s| s.service == service && s.kind == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_place_order_is_one_trace_across_the_three_services_and_a_refusal_ends_in_error() {
    let otlp = OtlpReceiver::start().await;
    let p = Pipeline::start(PipelineOptions {
        relays: 1,
        write_env: otlp.env(),
        // The default lease: with the tests' 2 s, a relay stalled that long on a loaded machine
        // sends its unmarked rows again, and the trace would hold a third publish span.
        relay_env: [otlp.env(), vec![("RELAY_LEASE_TTL".to_owned(), "10s".to_owned())]].concat(),
        read_env: otlp.env(),
        ..PipelineOptions::default()
    })
    .await;

    // A product to order, created by a caller without a trace context: a new root.
    let sku = format!("trace-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let product =
        json!({"sku": sku, "name": "Kettle", "description": "", "price_cents": 100, "currency": "EUR", "stock": 5});
    let res = p
        .client
        .post(p.write_api.url("/v1/products"))
        .bearer_auth(admin_token())
        .json(&product)
        .send()
        .await
        .expect("create product");
    assert_eq!(res.status().as_u16(), 201);
    let product_id = res.json::<Value>().await.expect("body")["id"]
        .as_str()
        .expect("id")
        .to_owned();

    // The order, continuing the caller's trace.
    let (trace, caller_span) = caller_context();
    let customer = Uuid::now_v7();
    let (status, order) = post(
        &p,
        "/v1/orders",
        &customer_token(customer),
        &format!("00-{trace}-{caller_span}-01"),
        json!({"lines": [{"product_id": product_id, "quantity": 2}]}),
    )
    .await;
    assert_eq!(status, 201, "{order}");
    let spans = otlp
        .trace(&trace, WAIT, |s| {
            // Each service exports on its own schedule: wait for every one of them.
            !named(s, "write-api", "POST /v1/orders").is_empty()
                && !named(s, "write-api", "command transaction").is_empty()
                && of_kind(s, "outbox-relay", KIND_PRODUCER).len() == 2
                && of_kind(s, "read-api", KIND_CONSUMER).len() == 2
                && !named(s, "read-api", "cache update").is_empty()
        })
        .await;

    let services: HashSet<&str> = spans.iter().map(|s| s.service.as_str()).collect();
    assert_eq!(
        services,
        HashSet::from(["write-api", "outbox-relay", "read-api"]),
        "{spans:#?}"
    );

    // write-api: the server span continues the caller's; the transaction is its child.
    let server = named(&spans, "write-api", "POST /v1/orders");
    assert_eq!(server.len(), 1, "{spans:#?}");
    let server = server[0];
    assert_eq!(server.kind, KIND_SERVER);
    assert_eq!(server.parent_span_id, caller_span);
    assert_ne!(server.status, STATUS_ERROR);
    assert_eq!(
        server.attributes.get("http.response.status_code").map(String::as_str),
        Some("201")
    );
    let tx = named(&spans, "write-api", "command transaction");
    assert_eq!(tx.len(), 1, "{spans:#?}");
    let tx = tx[0];
    assert_eq!(tx.parent_span_id, server.span_id);

    // The outbox rows carry the transaction's context, with the caller's tracestate.
    let rows = p
        .write_db
        .query_json(&format!(
            "SELECT event_type, headers FROM outbox WHERE aggregate_id IN ('{}', '{product_id}') AND event_type <> 'product.created'",
            order["id"].as_str().expect("order id")
        ))
        .await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    for row in &rows {
        assert_eq!(
            row["headers"]["traceparent"],
            format!("00-{trace}-{}-01", tx.span_id),
            "{row}"
        );
        assert_eq!(row["headers"]["tracestate"], "e2e=1", "{row}");
    }

    // outbox-relay: one publish span per row, each the child of the transaction.
    let publishes = of_kind(&spans, "outbox-relay", KIND_PRODUCER);
    for publish in &publishes {
        assert_eq!(publish.parent_span_id, tx.span_id, "{publish:#?}");
        assert_ne!(publish.status, STATUS_ERROR, "{publish:#?}");
    }
    let publish_ids: HashSet<&str> = publishes.iter().map(|s| s.span_id.as_str()).collect();

    // The messages carry the publish spans' contexts (and the tracestate).
    let order_id = order["id"].as_str().expect("order id");
    let deadline = std::time::Instant::now() + WAIT;
    let deliveries = loop {
        let of_order: Vec<_> = p
            .recorder
            .all()
            .into_iter()
            .filter(|d| (d.subject == order_id || d.subject == product_id) && d.routing_key != "product.created")
            .collect();
        if of_order.len() >= 2 {
            break of_order;
        }
        assert!(std::time::Instant::now() < deadline, "the order's messages never came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut message_parents = HashSet::new();
    for d in &deliveries {
        let headers = d.properties.headers().clone().expect("headers");
        let header = |name: &str| match headers.inner().get(name) {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            other => panic!("{name}: {other:?}"),
        };
        let tp = header("traceparent");
        assert!(tp.starts_with(&format!("00-{trace}-")), "{tp}");
        message_parents.insert(tp[36..52].to_owned());
        assert_eq!(header("tracestate"), "e2e=1");
    }
    assert_eq!(message_parents, publish_ids.iter().map(|s| (*s).to_owned()).collect());

    // read-api: each apply span is the child of its message's publish span; the view write and
    // the cache update are children of an apply span.
    let applies = of_kind(&spans, "read-api", KIND_CONSUMER);
    let apply_parents: HashSet<&str> = applies.iter().map(|s| s.parent_span_id.as_str()).collect();
    assert_eq!(apply_parents, publish_ids, "{spans:#?}");
    let apply_ids: HashSet<&str> = applies.iter().map(|s| s.span_id.as_str()).collect();
    for step in ["view write", "cache update"] {
        let steps = named(&spans, "read-api", step);
        assert!(!steps.is_empty(), "no {step}: {spans:#?}");
        for s in steps {
            assert!(apply_ids.contains(s.parent_span_id.as_str()), "{s:#?}");
        }
    }

    // The product's creation had no caller context: its server span is a root, and its trace
    // still reaches the projector.
    let created = otlp
        .spans()
        .into_iter()
        .find(|s| s.name == "POST /v1/products" && s.service == "write-api")
        .expect("the creation's server span, exported before the order's");
    assert_eq!(created.parent_span_id, "");
    otlp.trace(&created.trace_id, WAIT, |s| {
        !of_kind(s, "read-api", KIND_CONSUMER).is_empty()
    })
    .await;

    // A refused command (sku taken, 409) ends its trace with an error, and publishes nothing.
    let (refused_trace, refused_caller) = caller_context();
    let (status, problem) = post(
        &p,
        "/v1/products",
        &admin_token(),
        &format!("00-{refused_trace}-{refused_caller}-01"),
        product,
    )
    .await;
    assert_eq!(status, 409, "{problem}");
    let refused = otlp
        .trace(&refused_trace, WAIT, |s| {
            !named(s, "write-api", "POST /v1/products").is_empty()
                && !named(s, "write-api", "command transaction").is_empty()
        })
        .await;
    let server = named(&refused, "write-api", "POST /v1/products")[0];
    assert_eq!(server.status, STATUS_ERROR, "{server:#?}");
    assert_eq!(server.status_message, "409 Conflict");
    assert_eq!(server.parent_span_id, refused_caller);
    assert_eq!(
        named(&refused, "write-api", "command transaction")[0].status,
        STATUS_ERROR
    );
    assert!(refused.iter().all(|s| s.service == "write-api"), "{refused:#?}");

    // Probes and scrapes are not traced: the readiness polls that started the pipeline, and
    // these, left no span. A command after the probes, once its spans came back from all three
    // services, proves each service exported whatever it recorded before (each exports in order).
    let read_api = p.read_api.as_ref().expect("a read-api");
    for service in [&p.write_api, &p.relays[0], read_api] {
        for path in ["/health/live", "/health/ready", "/metrics"] {
            let res = p.client.get(service.url(path)).send().await.expect("probe");
            assert!(res.status().is_success(), "{path}");
        }
    }
    let (after_trace, after_caller) = caller_context();
    let later = json!({"sku": format!("{sku}-after"), "name": "Kettle", "description": "", "price_cents": 100, "currency": "EUR", "stock": 5});
    let (status, problem) = post(
        &p,
        "/v1/products",
        &admin_token(),
        &format!("00-{after_trace}-{after_caller}-01"),
        later,
    )
    .await;
    assert_eq!(status, 201, "{problem}");
    otlp.trace(&after_trace, WAIT, |s| {
        !named(s, "write-api", "POST /v1/products").is_empty()
            && !of_kind(s, "outbox-relay", KIND_PRODUCER).is_empty()
            && !of_kind(s, "read-api", KIND_CONSUMER).is_empty()
    })
    .await;
    let probes: Vec<_> = otlp
        .spans()
        .into_iter()
        .filter(|s| s.name.starts_with("GET /health/") || s.name == "GET /metrics")
        .collect();
    assert!(probes.is_empty(), "probes were traced: {probes:#?}");
}
