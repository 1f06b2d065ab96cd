//! Property-based tests of the domain rules: random sequences of valid and invalid commands
//! against a small catalog and its orders, checking after every step that
//!
//! - stock never goes below zero (nor above the contract's maximum);
//! - stock is conserved: each product's stock is its initial stock, plus the accepted
//!   adjustments, minus what the orders that are not cancelled hold (so place + cancel
//!   restores it exactly);
//! - an accepted command bumps the version of every aggregate it changes by exactly 1, emits
//!   one event per changed aggregate with `sequence` = the new version, and touches nothing
//!   else;
//! - a refused command changes nothing at all (products and orders compare equal);
//! - an order's status only moves `placed → paid → shipped` or `placed|paid → cancelled`;
//! - money cannot overflow: at any line count, quantity and price within the limits an order's
//!   line totals and total are exact (`i64`, checked against `i128`), and past the limits the
//!   order is refused (422), never a panic.

use std::collections::HashMap;

use chrono::{DateTime, TimeDelta, Utc};
use ordering_schema::events::{EventKind, OrderStatus};
use proptest::prelude::*;
use uuid::Uuid;

use super::values::{DELTA_MAX, LINES_MAX, PRICE_CENTS_MAX, QUANTITY_MAX, STOCK_MAX};
use super::{DomainError, NewProduct, Order, OrderLineRequest, PlaceOrder, Product, ProductChanges, Recorded};

const PRODUCTS: usize = 4;

#[derive(Clone, Debug)]
enum Command {
    Adjust {
        product: usize,
        delta: i64,
        reason: Option<String>,
    },
    Update {
        product: usize,
        name: Option<String>,
        price_cents: Option<i64>,
    },
    Place {
        lines: Vec<(usize, i64)>,
    },
    Pay {
        order: usize,
        reference: String,
    },
    Ship {
        order: usize,
    },
    Cancel {
        order: usize,
        reason: Option<String>,
    },
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9 ]{1,20}",
        1 => Just(String::new()),
        1 => Just("x".repeat(501)),
        1 => Just("nul\0inside".to_owned()),
        1 => "[\u{202e}\u{0301}\u{1F600}]{1,5}",
    ]
}

fn delta() -> impl Strategy<Value = i64> {
    prop_oneof![
        6 => -30i64..30,
        1 => Just(0i64),
        1 => Just(DELTA_MAX),
        1 => Just(DELTA_MAX + 1),
        1 => Just(-DELTA_MAX - 1),
        1 => Just(i64::MIN),
        1 => Just(i64::MAX),
    ]
}

fn quantity() -> impl Strategy<Value = i64> {
    prop_oneof![8 => 1i64..15, 1 => -2i64..=0, 1 => Just(10_001i64), 1 => Just(i64::MAX)]
}

fn command() -> impl Strategy<Value = Command> {
    let idx = 0..PRODUCTS + 1; // one past the end: an unknown product
    prop_oneof![
        3 => (idx.clone(), delta(), proptest::option::of(text()))
            .prop_map(|(product, delta, reason)| Command::Adjust { product, delta, reason }),
        1 => (idx.clone(), proptest::option::of(text()), proptest::option::of(prop_oneof![0i64..5_000, Just(-1i64), Just(1_000_000_000_001i64)]))
            .prop_map(|(product, name, price_cents)| Command::Update { product, name, price_cents }),
        4 => prop::collection::vec((idx, quantity()), 0..5).prop_map(|lines| Command::Place { lines }),
        2 => (0usize..12, text()).prop_map(|(order, reference)| Command::Pay { order, reference }),
        2 => (0usize..12).prop_map(|order| Command::Ship { order }),
        2 => (0usize..12, proptest::option::of(text())).prop_map(|(order, reason)| Command::Cancel { order, reason }),
    ]
}

fn legal(from: OrderStatus, to: OrderStatus) -> bool {
    use OrderStatus::*;
    from == to
        || matches!(
            (from, to),
            (Placed, Paid) | (Paid, Shipped) | (Placed | Paid, Cancelled)
        )
}

struct World {
    products: Vec<Product>,
    /// Product ids that are not in the catalog.
    unknown: Uuid,
    orders: Vec<Order>,
    initial_stock: Vec<i64>,
    adjusted: Vec<i64>,
    now: DateTime<Utc>,
}

impl World {
    fn new(stocks: &[i64]) -> Self {
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("t0");
        let products = stocks
            .iter()
            .enumerate()
            .map(|(i, &stock)| {
                Product::create(
                    Uuid::from_u128(i as u128 + 1),
                    NewProduct {
                        sku: format!("SKU-{i}"),
                        name: format!("product {i}"),
                        description: None,
                        price_cents: 100 * (i as i64 + 1),
                        currency: "EUR".into(),
                        stock,
                    },
                    now,
                )
                .expect("valid product")
                .0
            })
            .collect();
        Self {
            products,
            unknown: Uuid::from_u128(u128::MAX),
            orders: Vec::new(),
            initial_stock: stocks.to_vec(),
            adjusted: vec![0; stocks.len()],
            now,
        }
    }

    fn product_id(&self, i: usize) -> Uuid {
        self.products.get(i).map_or(self.unknown, Product::id)
    }

    /// The products an order's lines name (as the store would load them).
    fn products_of(&self, order: &Order) -> Vec<usize> {
        order
            .state()
            .lines
            .iter()
            .filter_map(|l| self.products.iter().position(|p| p.id() == l.product_id))
            .collect()
    }

    /// Runs `cmd`; returns the ids it reports changed (from its events) or the refusal.
    fn run(&mut self, cmd: &Command) -> Result<Vec<Recorded>, DomainError> {
        self.now += TimeDelta::seconds(1);
        let now = self.now;
        match cmd {
            Command::Adjust { product, delta, reason } => {
                let Some(p) = self.products.get_mut(*product) else {
                    return Err(DomainError::field("id", "unknown product"));
                };
                let e = p.adjust_stock(*delta, reason.as_deref(), now)?;
                self.adjusted[*product] += delta;
                Ok(vec![e])
            }
            Command::Update {
                product,
                name,
                price_cents,
            } => {
                let Some(p) = self.products.get_mut(*product) else {
                    return Err(DomainError::field("id", "unknown product"));
                };
                let changes = ProductChanges {
                    name: name.clone(),
                    description: None,
                    price_cents: *price_cents,
                };
                Ok(p.update(changes, now)?.into_iter().collect())
            }
            Command::Place { lines } => {
                let requests = lines
                    .iter()
                    .map(|&(i, quantity)| OrderLineRequest {
                        product_id: self.product_id(i),
                        quantity,
                    })
                    .collect();
                let request = PlaceOrder::validate(Uuid::from_u128(7), requests)?;
                let id = Uuid::from_u128(1_000 + self.orders.len() as u128);
                let (order, events) = Order::place(id, request, &mut self.products, now)?;
                self.orders.push(order);
                Ok(events)
            }
            Command::Pay { order, reference } => {
                let Some(o) = self.orders.get_mut(*order) else {
                    return Err(DomainError::field("id", "unknown order"));
                };
                Ok(vec![o.pay(reference, now)?])
            }
            Command::Ship { order } => {
                let Some(o) = self.orders.get_mut(*order) else {
                    return Err(DomainError::field("id", "unknown order"));
                };
                Ok(vec![o.ship(now)?])
            }
            Command::Cancel { order, reason } => {
                let Some(o) = self.orders.get(*order) else {
                    return Err(DomainError::field("id", "unknown order"));
                };
                // As the store does: load the order's products, lock them, hand them over.
                let slots = self.products_of(o);
                let mut loaded: Vec<Product> = slots.iter().map(|&k| self.products[k].clone()).collect();
                let mut o = o.clone();
                let events = o.cancel(reason.as_deref(), &mut loaded, now)?;
                for (k, p) in slots.into_iter().zip(loaded) {
                    self.products[k] = p;
                }
                self.orders[*order] = o;
                Ok(events)
            }
        }
    }

    /// Stock held by orders that are not cancelled, per product.
    fn reserved(&self) -> HashMap<Uuid, i64> {
        let mut out = HashMap::new();
        for o in self
            .orders
            .iter()
            .filter(|o| o.state().status != OrderStatus::Cancelled)
        {
            for l in &o.state().lines {
                *out.entry(l.product_id).or_default() += l.quantity;
            }
        }
        out
    }
}

fn versions(w: &World) -> HashMap<Uuid, i64> {
    w.products
        .iter()
        .map(|p| (p.id(), p.version()))
        .chain(w.orders.iter().map(|o| (o.id(), o.version())))
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(768))]

    #[test]
    fn command_sequences_keep_every_invariant(
        stocks in prop::collection::vec(0i64..40, PRODUCTS),
        commands in prop::collection::vec(command(), 1..40),
    ) {
        let mut w = World::new(&stocks);
        for cmd in &commands {
            let products_before = w.products.clone();
            let orders_before = w.orders.clone();
            let versions_before = versions(&w);
            let statuses_before: Vec<OrderStatus> = w.orders.iter().map(|o| o.state().status).collect();

            match w.run(cmd) {
                Err(e) => {
                    // Refused: nothing changed.
                    prop_assert_eq!(&w.products, &products_before, "{:?} refused ({:?}) but changed products", cmd, e);
                    prop_assert_eq!(&w.orders, &orders_before, "{:?} refused ({:?}) but changed orders", cmd, e);
                }
                Ok(events) => {
                    // An update to the values a product already has is a no-op: no event, and the
                    // version checks below prove nothing moved.
                    prop_assert!(!events.is_empty() || matches!(cmd, Command::Update { .. }), "{:?} recorded nothing", cmd);
                    let after = versions(&w);
                    let mut changed: Vec<Uuid> = events.iter().map(Recorded::aggregate_id).collect();
                    changed.sort_unstable();
                    let n = changed.len();
                    changed.dedup();
                    prop_assert_eq!(changed.len(), n, "one event per changed aggregate: {:?}", cmd);
                    for (id, v) in &after {
                        let was = versions_before.get(id).copied().unwrap_or(0);
                        if changed.contains(id) {
                            prop_assert_eq!(*v, was + 1, "{:?}: {} moved from {} to {}", cmd, id, was, v);
                        } else {
                            prop_assert_eq!(*v, was, "{:?} changed {} without an event", cmd, id);
                        }
                    }
                    for e in &events {
                        prop_assert_eq!(Some(&e.sequence()), after.get(&e.aggregate_id()));
                        let state_matches = match e {
                            Recorded::Product(_, d) => w.products.iter().any(|p| p.state() == d),
                            Recorded::Order(_, d) => w.orders.iter().any(|o| o.state() == d),
                        };
                        prop_assert!(state_matches, "event data is not the new state: {:?}", e);
                        if let Recorded::Order(kind, _) = e {
                            prop_assert!(matches!(
                                kind,
                                EventKind::OrderPlaced | EventKind::OrderPaid | EventKind::OrderShipped | EventKind::OrderCancelled
                            ));
                        }
                    }
                }
            }

            // Statuses move only along the machine.
            for (o, before) in w.orders.iter().zip(&statuses_before) {
                prop_assert!(legal(*before, o.state().status), "{:?} -> {:?} by {:?}", before, o.state().status, cmd);
            }
            for o in &w.orders[statuses_before.len()..] {
                prop_assert_eq!(o.state().status, OrderStatus::Placed);
                prop_assert_eq!(o.version(), 1);
            }

            // Stock: never negative, never raised above the maximum by an adjustment (a
            // cancellation may return goods above it), and conserved.
            let reserved = w.reserved();
            for (i, p) in w.products.iter().enumerate() {
                let stock = p.state().stock;
                prop_assert!(stock >= 0, "stock {} of product {}", stock, i);
                if let Command::Adjust { product, delta, .. } = cmd
                    && *product == i
                    && *delta > 0
                    && stock != products_before[i].state().stock
                {
                    prop_assert!(stock <= STOCK_MAX, "adjusted stock {} of product {}", stock, i);
                }
                let expected = w.initial_stock[i] + w.adjusted[i] - reserved.get(&p.id()).copied().unwrap_or(0);
                prop_assert_eq!(stock, expected, "stock of product {} after {:?}", i, cmd);
            }
        }
    }

    #[test]
    fn place_then_cancel_restores_stock_exactly(
        stocks in prop::collection::vec(0i64..40, PRODUCTS),
        lines in prop::collection::vec((0..PRODUCTS, 1i64..20), 1..PRODUCTS + 1),
        pay_first in any::<bool>(),
    ) {
        let mut w = World::new(&stocks);
        let before: Vec<i64> = w.products.iter().map(|p| p.state().stock).collect();
        if w.run(&Command::Place { lines }).is_ok() {
            if pay_first {
                let paid = w.run(&Command::Pay { order: 0, reference: "ref".into() });
                prop_assert!(paid.is_ok(), "{:?}", paid);
            }
            let cancelled = w.run(&Command::Cancel { order: 0, reason: None });
            prop_assert!(cancelled.is_ok(), "{:?}", cancelled);
            // A second cancel, a pay or a ship of a cancelled order are refused.
            for cmd in [
                Command::Cancel { order: 0, reason: None },
                Command::Pay { order: 0, reference: "r".into() },
                Command::Ship { order: 0 },
            ] {
                let r = w.run(&cmd);
                prop_assert!(matches!(r, Err(DomainError::InvalidTransition { .. })), "{:?}", r);
            }
        }
        let after: Vec<i64> = w.products.iter().map(|p| p.state().stock).collect();
        prop_assert_eq!(after, before);
    }

    #[test]
    fn an_order_larger_than_the_stock_is_refused_whole(
        stocks in prop::collection::vec(0i64..10, PRODUCTS),
        extra in 1i64..5,
        other in 1i64..3,
    ) {
        let mut w = World::new(&stocks);
        let before = w.products.clone();
        // The first line asks for more than there is; the second would fit.
        let lines = vec![(0, stocks[0] + extra), (1, other.min(stocks[1]).max(1))];
        let r = w.run(&Command::Place { lines });
        prop_assert!(r.is_err(), "{:?}", r);
        prop_assert_eq!(w.products, before);
        prop_assert!(w.orders.is_empty());
    }
}

// The largest order the limits allow totals 10^18 cents: it fits `i64` with room to spare.
// If a limit is ever raised past that, this stops the build.
const _: () = assert!((LINES_MAX as i128) * (QUANTITY_MAX as i128) * (PRICE_CENTS_MAX as i128) <= i64::MAX as i128);

/// A value in `0..=max`, often exactly `max`, sometimes one past it.
fn up_to(max: i64) -> impl Strategy<Value = i64> {
    prop_oneof![4 => Just(max), 4 => 1..=max, 1 => Just(max + 1)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn order_totals_are_exact_at_the_limits(
        lines in prop_oneof![
            4 => Just(LINES_MAX),
            4 => 1..=LINES_MAX,
            1 => Just(LINES_MAX + 1),
        ]
        .prop_flat_map(|n| prop::collection::vec((up_to(PRICE_CENTS_MAX), up_to(QUANTITY_MAX)), n)),
    ) {
        let now = DateTime::from_timestamp(1_700_000_000, 0).expect("t0");
        // Prices past the limit cannot reach an order: product creation refuses them.
        let mut products: Vec<Product> = lines
            .iter()
            .enumerate()
            .map(|(i, &(price_cents, _))| {
                Product::create(
                    Uuid::from_u128(i as u128 + 1),
                    NewProduct {
                        sku: format!("SKU-{i}"),
                        name: "p".into(),
                        description: None,
                        price_cents: price_cents.min(PRICE_CENTS_MAX),
                        currency: "EUR".into(),
                        stock: STOCK_MAX,
                    },
                    now,
                )
                .expect("valid product")
                .0
            })
            .collect();
        let requests: Vec<OrderLineRequest> = products
            .iter()
            .zip(&lines)
            .map(|(p, &(_, quantity))| OrderLineRequest { product_id: p.id(), quantity })
            .collect();
        let within = lines.len() <= LINES_MAX && lines.iter().all(|&(_, q)| q <= QUANTITY_MAX);
        let placed = PlaceOrder::validate(Uuid::from_u128(7), requests)
            .and_then(|request| Order::place(Uuid::from_u128(1_000), request, &mut products, now));
        match placed {
            Ok((order, _)) => {
                prop_assert!(within, "an order past the limits was accepted");
                let mut expected: i128 = 0;
                for (line, p) in order.state().lines.iter().zip(&products) {
                    let exact = i128::from(p.state().price_cents) * i128::from(line.quantity);
                    prop_assert_eq!(i128::from(line.line_total_cents), exact);
                    expected += exact;
                }
                prop_assert_eq!(i128::from(order.state().total_cents), expected);
            }
            Err(DomainError::Validation(errors)) => {
                prop_assert!(!within, "an order within the limits was refused: {:?}", errors);
            }
            Err(e) => prop_assert!(false, "unexpected refusal {:?}", e),
        }
    }
}
