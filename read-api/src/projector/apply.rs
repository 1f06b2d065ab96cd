//! Applying events to a set of view tables, set-wise (the projector's and the rebuild's code).

use std::collections::HashMap;

use ordering_schema::events::AggregateType;
use uuid::Uuid;

use super::Event;
use crate::views::{self, Continuity, Outcome, Tables};

/// Applies one event to `tables` (see [`apply_all`]).
pub async fn apply(
    conn: &mut diesel_async::AsyncPgConnection,
    tables: &Tables,
    event: &Event,
    continuity: Continuity,
) -> diesel::QueryResult<Outcome> {
    let mut out = apply_all(conn, tables, &[event], continuity).await?;
    Ok(out.pop().unwrap_or(Outcome::Gap { have: 0 }))
}

/// Applies `events` to `tables`, those of one aggregate in the order given, and says what
/// each did (in input order). Set-wise: round `r` applies the `r`-th event of every
/// aggregate, one statement per aggregate type, so a batch of events of distinct aggregates
/// costs one or two statements. Once an event of an aggregate is a gap, its later events in
/// `events` are gaps too, without being tried. Atomic only inside the caller's transaction.
pub async fn apply_all(
    conn: &mut diesel_async::AsyncPgConnection,
    tables: &Tables,
    events: &[&Event],
    continuity: Continuity,
) -> diesel::QueryResult<Vec<Outcome>> {
    let mut round_of = Vec::with_capacity(events.len());
    let mut seen: HashMap<(AggregateType, Uuid), usize> = HashMap::new();
    for e in events {
        let n = seen.entry(e.key()).or_insert(0);
        round_of.push(*n);
        *n += 1;
    }
    let rounds = seen.values().copied().max().unwrap_or(0);
    let mut out: Vec<Option<Outcome>> = vec![None; events.len()];
    let mut gapped: HashMap<(AggregateType, Uuid), i64> = HashMap::new();
    for round in 0..rounds {
        let mut products = Vec::new();
        let mut product_at = Vec::new();
        let mut orders = Vec::new();
        let mut order_at = Vec::new();
        for (i, e) in events.iter().enumerate() {
            if round_of[i] != round {
                continue;
            }
            if let Some(have) = gapped.get(&e.key()) {
                out[i] = Some(Outcome::Gap { have: *have });
                continue;
            }
            match e {
                Event::Product { data, sequence, .. } => {
                    products.push(views::ProductChange {
                        data,
                        sequence: *sequence,
                    });
                    product_at.push(i);
                }
                Event::Order { data, sequence, time } => {
                    orders.push(views::OrderChange {
                        data,
                        sequence: *sequence,
                        at: *time,
                    });
                    order_at.push(i);
                }
            }
        }
        let p = views::apply_products(conn, tables, &products, continuity).await?;
        let o = views::apply_orders(conn, tables, &orders, continuity).await?;
        for (i, outcome) in product_at.into_iter().zip(p).chain(order_at.into_iter().zip(o)) {
            if let Outcome::Gap { have } = outcome {
                gapped.insert(events[i].key(), have);
            }
            out[i] = Some(outcome);
        }
    }
    Ok(out.into_iter().map(|o| o.unwrap_or(Outcome::Gap { have: 0 })).collect())
}
