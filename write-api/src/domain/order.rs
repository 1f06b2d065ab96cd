//! The order aggregate: what a customer bought, at which prices, and where it is in its life.
//!
//! Invariants it guards: 1 to 100 lines of distinct products, each quantity 1 to 10,000, one
//! currency, totals that are exact (checked arithmetic), stock reserved for every line or for
//! none, and the status machine `placed → paid → shipped`, `placed|paid → cancelled`.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

use chrono::{DateTime, Utc};
use ordering_schema::events::{EventKind, OrderData, OrderLineData, OrderStatus};
use uuid::Uuid;

use super::error::{DomainError, Recorded};
use super::product::Product;
use super::values::{self, Checks};

/// One line of a place-order request, as the client sent it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OrderLineRequest {
    pub product_id: Uuid,
    pub quantity: i64,
}

/// A place-order request whose shape is valid (checked before any product is looked up, so
/// 422 wins over 404).
///
/// The fields are private so that holding a `PlaceOrder` proves [`PlaceOrder::validate`] ran.
#[derive(Debug, Clone)]
pub struct PlaceOrder {
    customer_id: Uuid,
    lines: Vec<OrderLineRequest>,
}

impl PlaceOrder {
    /// lines 1..=100 (field `lines`), quantity 1..=10_000 (field `lines[i].quantity`), no
    /// product twice (field `lines[i].product_id`, on every repeat after the first). All
    /// refusals are collected.
    pub fn validate(customer_id: Uuid, lines: Vec<OrderLineRequest>) -> Result<PlaceOrder, DomainError> {
        let mut checks = Checks::new();
        checks.check("lines", values::line_count(lines.len()));
        let mut first_line_of: HashMap<Uuid, usize> = HashMap::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            match first_line_of.entry(line.product_id) {
                Entry::Occupied(first) => checks.push(
                    format!("lines[{i}].product_id"),
                    format!("repeats the product of lines[{}]", first.get()),
                ),
                Entry::Vacant(slot) => {
                    slot.insert(i);
                }
            }
            checks.check(format!("lines[{i}].quantity"), values::quantity(line.quantity));
        }
        checks.finish()?;
        Ok(PlaceOrder { customer_id, lines })
    }

    /// The customer the order is for.
    pub fn customer_id(&self) -> Uuid {
        self.customer_id
    }

    /// The requested lines, in the request's order.
    pub fn lines(&self) -> &[OrderLineRequest] {
        &self.lines
    }

    /// The distinct product ids, sorted ascending (the order in which products must be
    /// locked, so that two concurrent orders can never wait on each other).
    pub fn product_ids(&self) -> Vec<Uuid> {
        let mut ids: Vec<Uuid> = self.lines.iter().map(|l| l.product_id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// An order. Its state changes only through the commands below, each of which validates
/// everything before it mutates anything, so a refused command leaves the order (and the
/// products it was given) as they were.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Order {
    state: OrderData,
    payment_reference: Option<String>,
    cancel_reason: Option<String>,
}

impl Order {
    /// Rehydrates a stored order (trusted, no checks).
    pub fn from_state(state: OrderData, payment_reference: Option<String>, cancel_reason: Option<String>) -> Self {
        Self {
            state,
            payment_reference,
            cancel_reason,
        }
    }

    /// The order's current state, as answered and published.
    pub fn state(&self) -> &OrderData {
        &self.state
    }

    /// The order's id.
    pub fn id(&self) -> Uuid {
        self.state.id
    }

    /// The order's version: 1 when placed, +1 per change.
    pub fn version(&self) -> i64 {
        self.state.version
    }

    /// The customer who placed the order.
    pub fn customer_id(&self) -> Uuid {
        self.state.customer_id
    }

    /// The payment reference given when the order was paid. Kept beside the state, not in it,
    /// because the contract's order answer and events do not carry it.
    pub fn payment_reference(&self) -> Option<&str> {
        self.payment_reference.as_deref()
    }

    /// The reason given when the order was cancelled (not in the state, like the payment
    /// reference).
    pub fn cancel_reason(&self) -> Option<&str> {
        self.cancel_reason.as_deref()
    }

    /// Places an order, reserving stock for every line.
    ///
    /// `products` holds exactly the products of `request.product_ids()` (any order;
    /// panic-free: a missing one is a Validation error on that line, `lines[i].product_id`).
    /// All products must share one currency (Validation, field `lines`). Reserves stock on
    /// each product (InsufficientStock on the first short line, in the request's order).
    /// Line: product sku/name/price copied; `line_total` = price × quantity with checked
    /// arithmetic (overflow -> Validation `lines[i].quantity`); total = sum (checked; overflow
    /// -> Validation `lines`). Lines keep the request's order. Order version 1, status placed.
    ///
    /// Returns the order and the events: `order.placed` first, then one
    /// `product.stock_changed` per product in `product_ids()` order. On any error no product
    /// is changed.
    pub fn place(
        id: Uuid,
        request: PlaceOrder,
        products: &mut [Product],
        now: DateTime<Utc>,
    ) -> Result<(Order, Vec<Recorded>), DomainError> {
        let mut checks = Checks::new();

        let slots: Vec<Option<usize>> = request
            .lines
            .iter()
            .map(|line| products.iter().position(|p| p.id() == line.product_id))
            .collect();
        for (i, slot) in slots.iter().enumerate() {
            if slot.is_none() {
                checks.push(format!("lines[{i}].product_id"), "unknown product");
            }
        }

        let mut found = slots.iter().flatten().map(|&k| &products[k]);
        let currency = found.next().map(|p| p.state().currency.clone()).unwrap_or_default();
        if found.any(|p| p.state().currency != currency) {
            checks.push("lines", "all products must have the same currency");
        }

        let mut lines = Vec::with_capacity(request.lines.len());
        let mut total: Option<i64> = Some(0);
        for (i, (line, slot)) in request.lines.iter().zip(&slots).enumerate() {
            let Some(&k) = slot.as_ref() else { continue };
            let product = products[k].state();
            let Some(line_total) = product.price_cents.checked_mul(line.quantity) else {
                checks.push(format!("lines[{i}].quantity"), "makes the line total too large");
                continue;
            };
            total = total.and_then(|t| t.checked_add(line_total));
            lines.push(OrderLineData {
                product_id: product.id,
                sku: product.sku.clone(),
                name: product.name.clone(),
                unit_price_cents: product.price_cents,
                quantity: line.quantity,
                line_total_cents: line_total,
            });
        }
        if total.is_none() {
            checks.push("lines", "makes the order total too large");
        }
        checks.finish()?;
        // `finish` succeeded, so no addition overflowed.
        let total_cents = total.unwrap_or_default();

        // Reserve on copies and write them back only once every line succeeded: all lines
        // or none, as the contract promises, without an undo path to get wrong.
        let mut work = products.to_vec();
        let mut stock_events = Vec::with_capacity(request.lines.len());
        for (line, slot) in request.lines.iter().zip(&slots) {
            if let Some(&k) = slot.as_ref() {
                stock_events.push(work[k].reserve(line.quantity, now)?);
            }
        }
        products.clone_from_slice(&work);
        stock_events.sort_by_key(Recorded::aggregate_id);

        let order = Order {
            state: OrderData {
                id,
                customer_id: request.customer_id,
                status: OrderStatus::Placed,
                lines,
                total_cents,
                currency,
                version: 1,
                created_at: now,
                updated_at: now,
            },
            payment_reference: None,
            cancel_reason: None,
        };
        let mut events = Vec::with_capacity(1 + stock_events.len());
        events.push(order.record(EventKind::OrderPlaced));
        events.extend(stock_events);
        Ok((order, events))
    }

    /// placed -> paid. `payment_reference` 1..=200 chars, no NUL (field
    /// `payment_reference`), checked before the status. Event `order.paid`.
    pub fn pay(&mut self, payment_reference: &str, now: DateTime<Utc>) -> Result<Recorded, DomainError> {
        let mut checks = Checks::new();
        checks.check("payment_reference", values::payment_reference(payment_reference));
        checks.finish()?;
        self.expect_status(&[OrderStatus::Placed], "paid")?;

        self.payment_reference = Some(payment_reference.to_owned());
        Ok(self.move_to(OrderStatus::Paid, EventKind::OrderPaid, now))
    }

    /// paid -> shipped. Event `order.shipped`.
    pub fn ship(&mut self, now: DateTime<Utc>) -> Result<Recorded, DomainError> {
        self.expect_status(&[OrderStatus::Paid], "shipped")?;
        Ok(self.move_to(OrderStatus::Shipped, EventKind::OrderShipped, now))
    }

    /// placed|paid -> cancelled; `reason` ≤ 500 chars, no NUL (field `reason`), checked
    /// before the status. `products` are the order's products (the caller locks them sorted
    /// by id); releases each line's quantity (a missing product is a Validation error on its
    /// line, `lines[i].product_id`, and changes nothing). Events: `order.cancelled` first,
    /// then `product.stock_changed` per product (sorted by product id).
    pub fn cancel(
        &mut self,
        reason: Option<&str>,
        products: &mut [Product],
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, DomainError> {
        let mut checks = Checks::new();
        if let Some(reason) = reason {
            checks.check("reason", values::reason(reason));
        }
        checks.finish()?;
        self.expect_status(&[OrderStatus::Placed, OrderStatus::Paid], "cancelled")?;

        let mut checks = Checks::new();
        let slots: Vec<Option<usize>> = self
            .state
            .lines
            .iter()
            .map(|line| products.iter().position(|p| p.id() == line.product_id))
            .collect();
        for (i, slot) in slots.iter().enumerate() {
            if slot.is_none() {
                checks.push(format!("lines[{i}].product_id"), "product not supplied");
            }
        }
        checks.finish()?;

        let mut stock_events: Vec<Recorded> = self
            .state
            .lines
            .iter()
            .zip(&slots)
            .filter_map(|(line, slot)| slot.map(|k| products[k].release(line.quantity, now)))
            .collect();
        stock_events.sort_by_key(Recorded::aggregate_id);

        self.cancel_reason = reason.map(str::to_owned);
        let mut events = Vec::with_capacity(1 + stock_events.len());
        events.push(self.move_to(OrderStatus::Cancelled, EventKind::OrderCancelled, now));
        events.extend(stock_events);
        Ok(events)
    }

    fn expect_status(&self, allowed: &[OrderStatus], action: &'static str) -> Result<(), DomainError> {
        if allowed.contains(&self.state.status) {
            Ok(())
        } else {
            Err(DomainError::InvalidTransition {
                from: self.state.status,
                action,
            })
        }
    }

    fn move_to(&mut self, status: OrderStatus, kind: EventKind, now: DateTime<Utc>) -> Recorded {
        self.state.status = status;
        self.state.version += 1;
        self.state.updated_at = now;
        self.record(kind)
    }

    fn record(&self, kind: EventKind) -> Recorded {
        Recorded::Order(kind, self.state.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::product::tests::{stored, t0};
    use chrono::TimeDelta;

    fn line(product_id: Uuid, quantity: i64) -> OrderLineRequest {
        OrderLineRequest { product_id, quantity }
    }

    fn fields(err: DomainError) -> Vec<String> {
        match err {
            DomainError::Validation(errors) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    fn ids(n: usize) -> Vec<Uuid> {
        (0..n).map(|_| Uuid::new_v4()).collect()
    }

    /// Two products (EUR, 250 and 1000 cents, stock 10 and 5) and an order for 2 + 3 of them,
    /// with the lines in descending id order so that line order and lock order differ.
    fn placed() -> (Order, Vec<Product>) {
        let mut pid = ids(2);
        pid.sort_unstable();
        let mut products = vec![stored(pid[0], "EUR", 250, 10), stored(pid[1], "EUR", 1_000, 5)];
        let request = PlaceOrder::validate(Uuid::now_v7(), vec![line(pid[1], 3), line(pid[0], 2)]).unwrap();
        let (order, _) = Order::place(Uuid::now_v7(), request, &mut products, t0()).unwrap();
        (order, products)
    }

    fn in_status(status: OrderStatus) -> (Order, Vec<Product>) {
        let (order, products) = placed();
        let mut state = order.state().clone();
        state.status = status;
        (Order::from_state(state, None, None), products)
    }

    const ALL_STATUSES: [OrderStatus; 4] = [
        OrderStatus::Placed,
        OrderStatus::Paid,
        OrderStatus::Shipped,
        OrderStatus::Cancelled,
    ];

    // --- PlaceOrder::validate ---

    #[test]
    fn validate_line_count_bounds() {
        let c = Uuid::now_v7();
        assert_eq!(fields(PlaceOrder::validate(c, vec![]).unwrap_err()), ["lines"]);
        assert!(PlaceOrder::validate(c, vec![line(Uuid::new_v4(), 1)]).is_ok());
        let hundred = ids(100).into_iter().map(|id| line(id, 1)).collect();
        assert!(PlaceOrder::validate(c, hundred).is_ok());
        let too_many = ids(101).into_iter().map(|id| line(id, 1)).collect();
        assert_eq!(fields(PlaceOrder::validate(c, too_many).unwrap_err()), ["lines"]);
    }

    #[test]
    fn validate_quantity_bounds() {
        let c = Uuid::now_v7();
        for ok in [1, values::QUANTITY_MAX] {
            assert!(PlaceOrder::validate(c, vec![line(Uuid::new_v4(), ok)]).is_ok());
        }
        for bad in [0, -1, values::QUANTITY_MAX + 1, i64::MIN, i64::MAX] {
            let err = PlaceOrder::validate(c, vec![line(Uuid::new_v4(), bad)]).unwrap_err();
            assert_eq!(fields(err), ["lines[0].quantity"], "quantity {bad}");
        }
    }

    #[test]
    fn validate_refuses_a_product_twice_and_collects_all_errors() {
        let p = ids(2);
        let err = PlaceOrder::validate(
            Uuid::now_v7(),
            vec![line(p[0], 1), line(p[1], 0), line(p[0], 2), line(p[0], 20_000)],
        )
        .unwrap_err();
        let DomainError::Validation(errors) = err else { panic!() };
        let got: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(
            got,
            [
                "lines[1].quantity",
                "lines[2].product_id",
                "lines[3].product_id",
                "lines[3].quantity"
            ]
        );
        assert_eq!(errors[1].message, "repeats the product of lines[0]");
    }

    #[test]
    fn product_ids_are_distinct_and_sorted() {
        let mut p = ids(3);
        let request = PlaceOrder::validate(Uuid::nil(), vec![line(p[2], 1), line(p[0], 1), line(p[1], 1)]).unwrap();
        p.sort_unstable();
        assert_eq!(request.product_ids(), p);
        assert_eq!(request.customer_id(), Uuid::nil());
        assert_eq!(request.lines().len(), 3);
    }

    // --- place ---

    #[test]
    fn place_builds_lines_totals_and_reserves_stock() {
        let mut pid = ids(2);
        pid.sort_unstable();
        let customer = Uuid::now_v7();
        let mut products = vec![stored(pid[1], "EUR", 1_000, 5), stored(pid[0], "EUR", 250, 10)];
        let request = PlaceOrder::validate(customer, vec![line(pid[1], 3), line(pid[0], 2)]).unwrap();
        let order_id = Uuid::now_v7();
        let (order, events) = Order::place(order_id, request, &mut products, t0()).unwrap();

        let s = order.state();
        assert_eq!((s.id, s.customer_id), (order_id, customer));
        assert_eq!(s.status, OrderStatus::Placed);
        assert_eq!(s.version, 1);
        assert_eq!((s.created_at, s.updated_at), (t0(), t0()));
        assert_eq!(s.currency, "EUR");
        assert_eq!(s.total_cents, 3_000 + 500);
        // Lines keep the request's order and copy the product's sku, name and price.
        assert_eq!(s.lines.len(), 2);
        assert_eq!(s.lines[0].product_id, pid[1]);
        assert_eq!(s.lines[0].sku, products[0].state().sku);
        assert_eq!(s.lines[0].name, products[0].state().name);
        assert_eq!(
            (
                s.lines[0].unit_price_cents,
                s.lines[0].quantity,
                s.lines[0].line_total_cents
            ),
            (1_000, 3, 3_000)
        );
        assert_eq!(s.lines[1].product_id, pid[0]);
        assert_eq!(s.lines[1].line_total_cents, 500);
        assert_eq!(order.payment_reference(), None);
        assert_eq!(order.cancel_reason(), None);

        assert_eq!(products[0].state().stock, 2);
        assert_eq!(products[1].state().stock, 8);
        assert!(products.iter().all(|p| p.version() == 2));

        // order.placed first, then one stock change per product in lock order.
        let kinds: Vec<_> = events.iter().map(Recorded::kind).collect();
        assert_eq!(
            kinds,
            [
                EventKind::OrderPlaced,
                EventKind::ProductStockChanged,
                EventKind::ProductStockChanged
            ]
        );
        assert_eq!(events[0], Recorded::Order(EventKind::OrderPlaced, s.clone()));
        assert_eq!(events[0].sequence(), 1);
        assert_eq!(events[1].aggregate_id(), pid[0]);
        assert_eq!(events[2].aggregate_id(), pid[1]);
        assert_eq!(
            events[1],
            Recorded::Product(EventKind::ProductStockChanged, products[1].state().clone())
        );
        assert_eq!(
            events[2],
            Recorded::Product(EventKind::ProductStockChanged, products[0].state().clone())
        );
        assert!(events[1..].iter().all(|e| e.sequence() == 2));
    }

    #[test]
    fn place_may_take_the_last_unit() {
        let p = Uuid::new_v4();
        let mut products = vec![stored(p, "USD", 1, 4)];
        let request = PlaceOrder::validate(Uuid::nil(), vec![line(p, 4)]).unwrap();
        Order::place(Uuid::now_v7(), request, &mut products, t0()).unwrap();
        assert_eq!(products[0].state().stock, 0);
    }

    #[test]
    fn place_rolls_back_every_reservation_when_a_later_line_is_short() {
        let pid = ids(3);
        let mut products = vec![
            stored(pid[0], "EUR", 100, 10),
            stored(pid[1], "EUR", 100, 10),
            stored(pid[2], "EUR", 100, 1),
        ];
        let before = products.clone();
        let request =
            PlaceOrder::validate(Uuid::nil(), vec![line(pid[0], 5), line(pid[1], 10), line(pid[2], 2)]).unwrap();
        let err = Order::place(Uuid::now_v7(), request, &mut products, t0()).unwrap_err();
        assert_eq!(
            err,
            DomainError::InsufficientStock {
                product_id: pid[2],
                available: 1,
                requested: 2
            }
        );
        assert_eq!(products, before);
    }

    #[test]
    fn place_reports_the_first_short_line_in_request_order() {
        let pid = ids(2);
        let mut products = vec![stored(pid[0], "EUR", 1, 0), stored(pid[1], "EUR", 1, 0)];
        let request = PlaceOrder::validate(Uuid::nil(), vec![line(pid[1], 1), line(pid[0], 1)]).unwrap();
        let err = Order::place(Uuid::now_v7(), request, &mut products, t0()).unwrap_err();
        assert!(matches!(err, DomainError::InsufficientStock { product_id, .. } if product_id == pid[1]));
    }

    #[test]
    fn place_refuses_mixed_currencies() {
        let pid = ids(3);
        let mut products = vec![
            stored(pid[0], "EUR", 1, 5),
            stored(pid[1], "EUR", 1, 5),
            stored(pid[2], "USD", 1, 5),
        ];
        let before = products.clone();
        let request = PlaceOrder::validate(Uuid::nil(), pid.iter().map(|&id| line(id, 1)).collect()).unwrap();
        let err = Order::place(Uuid::now_v7(), request, &mut products, t0()).unwrap_err();
        assert_eq!(fields(err), ["lines"]);
        assert_eq!(products, before);
    }

    #[test]
    fn place_refuses_missing_products_on_their_lines_without_panicking() {
        let pid = ids(3);
        let mut products = vec![stored(pid[1], "EUR", 1, 5)];
        let request =
            PlaceOrder::validate(Uuid::nil(), vec![line(pid[0], 1), line(pid[1], 1), line(pid[2], 1)]).unwrap();
        let before = products.clone();
        let err = Order::place(Uuid::now_v7(), request.clone(), &mut products, t0()).unwrap_err();
        assert_eq!(fields(err), ["lines[0].product_id", "lines[2].product_id"]);
        assert_eq!(products, before);

        let err = Order::place(Uuid::now_v7(), request, &mut [], t0()).unwrap_err();
        assert_eq!(fields(err).len(), 3);
    }

    #[test]
    fn place_ignores_products_the_request_does_not_name() {
        let pid = ids(2);
        let mut products = vec![stored(pid[0], "EUR", 1, 5), stored(pid[1], "USD", 1, 5)];
        let request = PlaceOrder::validate(Uuid::nil(), vec![line(pid[0], 1)]).unwrap();
        let (_, events) = Order::place(Uuid::now_v7(), request, &mut products, t0()).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(products[1].version(), 1);
    }

    /// A stored product whose price is beyond the input limit (the state is trusted, so only
    /// checked arithmetic stands between it and a wrapped total).
    fn priced(id: Uuid, price_cents: i64, stock: i64) -> Product {
        let mut state = stored(id, "EUR", 1, stock).state().clone();
        state.price_cents = price_cents;
        Product::from_state(state)
    }

    #[test]
    fn place_refuses_a_line_total_that_overflows() {
        let pid = ids(2);
        let mut products = vec![priced(pid[0], i64::MAX / 2 + 1, 10), priced(pid[1], 1, 10)];
        let before = products.clone();
        let request = PlaceOrder::validate(Uuid::nil(), vec![line(pid[1], 1), line(pid[0], 2)]).unwrap();
        let err = Order::place(Uuid::now_v7(), request, &mut products, t0()).unwrap_err();
        assert_eq!(fields(err), ["lines[1].quantity"]);
        assert_eq!(products, before);
    }

    #[test]
    fn place_refuses_an_order_total_that_overflows() {
        let pid = ids(2);
        let mut products = vec![priced(pid[0], i64::MAX, 10), priced(pid[1], 1, 10)];
        let before = products.clone();
        let request = PlaceOrder::validate(Uuid::nil(), vec![line(pid[0], 1), line(pid[1], 1)]).unwrap();
        let err = Order::place(Uuid::now_v7(), request, &mut products, t0()).unwrap_err();
        assert_eq!(fields(err), ["lines"]);
        assert_eq!(products, before);
    }

    #[test]
    fn place_at_the_largest_legal_amounts_does_not_overflow() {
        let pid = ids(100);
        let mut products: Vec<Product> = pid
            .iter()
            .map(|&id| stored(id, "EUR", values::PRICE_CENTS_MAX, values::QUANTITY_MAX))
            .collect();
        let request = PlaceOrder::validate(
            Uuid::nil(),
            pid.iter().map(|&id| line(id, values::QUANTITY_MAX)).collect(),
        )
        .unwrap();
        let (order, events) = Order::place(Uuid::now_v7(), request, &mut products, t0()).unwrap();
        assert_eq!(
            order.state().total_cents,
            100 * values::PRICE_CENTS_MAX * values::QUANTITY_MAX
        );
        assert_eq!(events.len(), 101);
        assert!(products.iter().all(|p| p.state().stock == 0));
        let ids_in_events: Vec<_> = events[1..].iter().map(Recorded::aggregate_id).collect();
        let mut sorted = pid.clone();
        sorted.sort_unstable();
        assert_eq!(ids_in_events, sorted);
    }

    // --- transitions ---

    #[test]
    fn every_transition_is_allowed_or_refused_as_the_contract_says() {
        for from in ALL_STATUSES {
            // pay
            let (mut order, _) = in_status(from);
            let before = order.clone();
            let result = order.pay("ref-1", t0());
            if from == OrderStatus::Placed {
                assert_eq!(order.state().status, OrderStatus::Paid);
                assert!(result.is_ok());
            } else {
                assert_eq!(
                    result.unwrap_err(),
                    DomainError::InvalidTransition { from, action: "paid" }
                );
                assert_eq!(order, before);
            }

            // ship
            let (mut order, _) = in_status(from);
            let before = order.clone();
            let result = order.ship(t0());
            if from == OrderStatus::Paid {
                assert_eq!(order.state().status, OrderStatus::Shipped);
                assert!(result.is_ok());
            } else {
                assert_eq!(
                    result.unwrap_err(),
                    DomainError::InvalidTransition {
                        from,
                        action: "shipped"
                    }
                );
                assert_eq!(order, before);
            }

            // cancel
            let (mut order, mut products) = in_status(from);
            let (before, products_before) = (order.clone(), products.clone());
            let result = order.cancel(None, &mut products, t0());
            if matches!(from, OrderStatus::Placed | OrderStatus::Paid) {
                assert_eq!(order.state().status, OrderStatus::Cancelled);
                assert!(result.is_ok());
            } else {
                assert_eq!(
                    result.unwrap_err(),
                    DomainError::InvalidTransition {
                        from,
                        action: "cancelled"
                    }
                );
                assert_eq!(order, before);
                assert_eq!(products, products_before);
            }
        }
    }

    #[test]
    fn pay_then_ship_bumps_versions_and_records_events() {
        let (mut order, _) = placed();
        let paid_at = t0() + TimeDelta::seconds(1);
        let event = order.pay("psp-123", paid_at).unwrap();
        assert_eq!(order.version(), 2);
        assert_eq!(order.payment_reference(), Some("psp-123"));
        assert_eq!(order.state().updated_at, paid_at);
        assert_eq!(order.state().created_at, t0());
        assert_eq!(event, Recorded::Order(EventKind::OrderPaid, order.state().clone()));
        assert_eq!((event.sequence(), event.aggregate_id()), (2, order.id()));

        let shipped_at = t0() + TimeDelta::seconds(2);
        let event = order.ship(shipped_at).unwrap();
        assert_eq!(order.version(), 3);
        assert_eq!(order.state().status, OrderStatus::Shipped);
        assert_eq!(order.state().updated_at, shipped_at);
        assert_eq!(order.payment_reference(), Some("psp-123"));
        assert_eq!(event, Recorded::Order(EventKind::OrderShipped, order.state().clone()));
        assert_eq!(event.sequence(), 3);
    }

    #[test]
    fn pay_reference_bounds() {
        for ok in ["r".to_owned(), "€".repeat(200)] {
            let (mut order, _) = placed();
            order.pay(&ok, t0()).unwrap();
        }
        for bad in ["".to_owned(), "€".repeat(201), "a\0b".to_owned()] {
            let (mut order, _) = placed();
            let before = order.clone();
            assert_eq!(fields(order.pay(&bad, t0()).unwrap_err()), ["payment_reference"]);
            assert_eq!(order, before);
        }
    }

    #[test]
    fn pay_checks_the_reference_before_the_status() {
        let (mut order, _) = in_status(OrderStatus::Shipped);
        assert_eq!(fields(order.pay("", t0()).unwrap_err()), ["payment_reference"]);
    }

    #[test]
    fn cancel_releases_stock_and_records_events_in_order() {
        let (mut order, mut products) = placed();
        order.pay("ref", t0()).unwrap();
        // The caller passes the products in lock order; give them shuffled to prove the
        // events do not depend on it.
        products.reverse();
        let at = t0() + TimeDelta::hours(1);
        let events = order.cancel(Some("changed my mind"), &mut products, at).unwrap();

        assert_eq!(order.version(), 3);
        assert_eq!(order.state().status, OrderStatus::Cancelled);
        assert_eq!(order.cancel_reason(), Some("changed my mind"));
        assert_eq!(order.payment_reference(), Some("ref"));
        assert_eq!(order.state().updated_at, at);

        // The lower id was stocked 10 and the higher 5 (see `placed`): both are whole again.
        products.sort_by_key(Product::id);
        assert_eq!(products.iter().map(|p| p.state().stock).collect::<Vec<_>>(), [10, 5]);
        assert!(products.iter().all(|p| p.version() == 3));

        assert_eq!(events.len(), 3);
        assert_eq!(
            events[0],
            Recorded::Order(EventKind::OrderCancelled, order.state().clone())
        );
        assert!(events[1].aggregate_id() < events[2].aggregate_id());
        for event in &events[1..] {
            let product = products.iter().find(|p| p.id() == event.aggregate_id()).unwrap();
            assert_eq!(
                event,
                &Recorded::Product(EventKind::ProductStockChanged, product.state().clone())
            );
        }
    }

    #[test]
    fn cancel_reason_bounds() {
        for ok in [None, Some(String::new()), Some("ж".repeat(500))] {
            let (mut order, mut products) = placed();
            order.cancel(ok.as_deref(), &mut products, t0()).unwrap();
            assert_eq!(order.cancel_reason(), ok.as_deref());
        }
        for bad in ["ж".repeat(501), "\0".to_owned()] {
            let (mut order, mut products) = placed();
            let (before, products_before) = (order.clone(), products.clone());
            let err = order.cancel(Some(&bad), &mut products, t0()).unwrap_err();
            assert_eq!(fields(err), ["reason"]);
            assert_eq!(order, before);
            assert_eq!(products, products_before);
        }
    }

    #[test]
    fn cancel_without_a_product_changes_nothing() {
        let (mut order, mut products) = placed();
        let dropped = products.remove(0);
        let (before, products_before) = (order.clone(), products.clone());
        let err = order.cancel(None, &mut products, t0()).unwrap_err();
        let missing_line = order
            .state()
            .lines
            .iter()
            .position(|l| l.product_id == dropped.id())
            .unwrap();
        assert_eq!(fields(err), [format!("lines[{missing_line}].product_id")]);
        assert_eq!(order, before);
        assert_eq!(products, products_before);
    }

    #[test]
    fn stock_is_whole_again_after_place_and_cancel() {
        let (mut order, mut products) = placed();
        assert_eq!(products.iter().map(|p| p.state().stock).collect::<Vec<_>>(), [8, 2]);
        order.cancel(None, &mut products, t0()).unwrap();
        assert_eq!(products.iter().map(|p| p.state().stock).collect::<Vec<_>>(), [10, 5]);
        // A second cancel is refused and releases nothing twice.
        let err = order.cancel(None, &mut products, t0()).unwrap_err();
        assert!(matches!(
            err,
            DomainError::InvalidTransition {
                from: OrderStatus::Cancelled,
                ..
            }
        ));
        assert_eq!(products.iter().map(|p| p.state().stock).collect::<Vec<_>>(), [10, 5]);
    }

    #[test]
    fn from_state_round_trips_with_its_side_fields() {
        let (order, _) = placed();
        let again = Order::from_state(order.state().clone(), Some("p".into()), Some("r".into()));
        assert_eq!(again.state(), order.state());
        assert_eq!(again.id(), order.id());
        assert_eq!(again.customer_id(), order.customer_id());
        assert_eq!(again.version(), 1);
        assert_eq!(again.payment_reference(), Some("p"));
        assert_eq!(again.cancel_reason(), Some("r"));
    }
}
