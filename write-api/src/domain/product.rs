//! The product aggregate: a catalog entry and its stock.
//!
//! Invariants it guards: every field within the contract's input limits when set by a command,
//! stock never below zero, version +1 per change with `created_at` fixed.
//!
//! No command records an event that changes nothing. A `PATCH` states a desired state, so
//! restating the current values is a successful no-op ([`Product::update`] records nothing
//! and the version stays); a stock adjustment states a change, and the contract asks for a
//! non-zero `delta`, so a zero delta is refused.

use chrono::{DateTime, Utc};
use ordering_schema::events::{EventKind, ProductData};
use uuid::Uuid;

use super::error::{DomainError, Recorded};
use super::values::{self, Checks};

/// The fields of a new product, as the client sent them (not yet validated).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewProduct {
    pub sku: String,
    pub name: String,
    /// `None` stores an empty description.
    pub description: Option<String>,
    pub price_cents: i64,
    pub currency: String,
    pub stock: i64,
}

/// The fields a `PATCH` may change; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProductChanges {
    pub name: Option<String>,
    pub description: Option<String>,
    pub price_cents: Option<i64>,
}

/// A product. Its state can only change through the commands below, each of which validates
/// everything before it mutates anything, so a refused command leaves the product as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Product {
    state: ProductData,
}

impl Product {
    /// Rehydrates a stored product (trusted, no checks).
    pub fn from_state(state: ProductData) -> Self {
        Self { state }
    }

    /// The product's current state, as answered and published.
    pub fn state(&self) -> &ProductData {
        &self.state
    }

    /// The product's id.
    pub fn id(&self) -> Uuid {
        self.state.id
    }

    /// The product's version: 1 when created, +1 per change.
    pub fn version(&self) -> i64 {
        self.state.version
    }

    /// Validates every field (collecting ALL field errors, not only the first) and creates
    /// version 1; event `product.created`.
    pub fn create(id: Uuid, input: NewProduct, now: DateTime<Utc>) -> Result<(Product, Recorded), DomainError> {
        let mut checks = Checks::new();
        checks.check("sku", values::sku(&input.sku));
        checks.check("name", values::name(&input.name));
        if let Some(description) = &input.description {
            checks.check("description", values::description(description));
        }
        checks.check("price_cents", values::price_cents(input.price_cents));
        checks.check("currency", values::currency(&input.currency));
        checks.check("stock", values::stock(input.stock));
        checks.finish()?;

        let product = Product {
            state: ProductData {
                id,
                sku: input.sku,
                name: input.name,
                description: input.description.unwrap_or_default(),
                price_cents: input.price_cents,
                currency: input.currency,
                stock: input.stock,
                version: 1,
                created_at: now,
                updated_at: now,
            },
        };
        let event = product.record(EventKind::ProductCreated);
        Ok((product, event))
    }

    /// At least one field must be given (else Validation with field `body`); validates given
    /// fields; version+1; event `product.updated`.
    ///
    /// When every given field already holds its value, nothing changes and nothing is recorded
    /// (`Ok(None)`): the request states the product's current state, so it succeeds as is and
    /// a retry of an applied `PATCH` answers the same.
    pub fn update(&mut self, changes: ProductChanges, now: DateTime<Utc>) -> Result<Option<Recorded>, DomainError> {
        if changes.name.is_none() && changes.description.is_none() && changes.price_cents.is_none() {
            return Err(DomainError::field(
                "body",
                "must change at least one of name, description, price_cents",
            ));
        }
        let mut checks = Checks::new();
        if let Some(name) = &changes.name {
            checks.check("name", values::name(name));
        }
        if let Some(description) = &changes.description {
            checks.check("description", values::description(description));
        }
        if let Some(price_cents) = changes.price_cents {
            checks.check("price_cents", values::price_cents(price_cents));
        }
        checks.finish()?;

        let s = &self.state;
        let restated = changes.name.as_ref().is_none_or(|n| *n == s.name)
            && changes.description.as_ref().is_none_or(|d| *d == s.description)
            && changes.price_cents.is_none_or(|p| p == s.price_cents);
        if restated {
            return Ok(None);
        }
        if let Some(name) = changes.name {
            self.state.name = name;
        }
        if let Some(description) = changes.description {
            self.state.description = description;
        }
        if let Some(price_cents) = changes.price_cents {
            self.state.price_cents = price_cents;
        }
        Ok(Some(self.bump(EventKind::ProductUpdated, now)))
    }

    /// `delta` non-zero and within ±1_000_000_000 (Validation, field `delta`); stock below 0 ->
    /// InsufficientStock{available: stock, requested: -delta}; resulting stock above
    /// 1_000_000_000 -> Validation field `delta`. `reason`: ≤ 500 chars, no NUL (field
    /// `reason`). version+1; event `product.stock_changed`.
    ///
    /// The reason is not part of the product's state: it belongs to the request's audit trail,
    /// which the caller keeps if it wants to.
    pub fn adjust_stock(
        &mut self,
        delta: i64,
        reason: Option<&str>,
        now: DateTime<Utc>,
    ) -> Result<Recorded, DomainError> {
        let mut checks = Checks::new();
        checks.check("delta", values::delta(delta));
        if let Some(reason) = reason {
            checks.check("reason", values::reason(reason));
        }
        checks.finish()?;

        // Checked although both operands are bounded: a rehydrated state is trusted, not
        // validated, and a wrap-around here would silently invent stock.
        let new_stock = self
            .state
            .stock
            .checked_add(delta)
            .ok_or_else(|| DomainError::field("delta", "would take stock out of range"))?;
        if new_stock < 0 {
            return Err(DomainError::InsufficientStock {
                product_id: self.state.id,
                available: self.state.stock,
                requested: -delta,
            });
        }
        // Only raising is bounded: a cancellation may have returned goods above the limit, and
        // the operator must still be able to take stock down from there.
        if delta > 0 && new_stock > values::STOCK_MAX {
            return Err(DomainError::field("delta", "would take stock above 1000000000"));
        }
        self.state.stock = new_stock;
        Ok(self.bump(EventKind::ProductStockChanged, now))
    }

    /// Takes `quantity` from stock for an order (InsufficientStock if not enough); version+1;
    /// `product.stock_changed`.
    ///
    /// A `quantity` below 1 is refused (Validation, field `quantity`): reserving a negative
    /// amount would add stock through the back door.
    pub fn reserve(&mut self, quantity: i64, now: DateTime<Utc>) -> Result<Recorded, DomainError> {
        if quantity < 1 {
            return Err(DomainError::field("quantity", "must be at least 1"));
        }
        if quantity > self.state.stock {
            return Err(DomainError::InsufficientStock {
                product_id: self.state.id,
                available: self.state.stock,
                requested: quantity,
            });
        }
        self.state.stock -= quantity;
        Ok(self.bump(EventKind::ProductStockChanged, now))
    }

    /// Gives back stock of a cancelled order; version+1; `product.stock_changed`.
    ///
    /// Infallible because a cancellation must always be able to return what it took. That may
    /// lift stock above the creation limit (stock can have been raised since the order was
    /// placed); the limit bounds input, not returned goods.
    pub fn release(&mut self, quantity: i64, now: DateTime<Utc>) -> Recorded {
        // Order lines always hold a positive quantity; clamping keeps "stock never negative"
        // true even if a corrupted line says otherwise, and saturating avoids a panic.
        self.state.stock = self.state.stock.saturating_add(quantity.max(0));
        self.bump(EventKind::ProductStockChanged, now)
    }

    fn bump(&mut self, kind: EventKind, now: DateTime<Utc>) -> Recorded {
        self.state.version += 1;
        self.state.updated_at = now;
        self.record(kind)
    }

    fn record(&self, kind: EventKind) -> Recorded {
        Recorded::Product(kind, self.state.clone())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use chrono::TimeDelta;

    pub(crate) fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    pub(crate) fn new_product() -> NewProduct {
        NewProduct {
            sku: "WIDGET-1".into(),
            name: "Widget".into(),
            description: Some("A widget".into()),
            price_cents: 1_250,
            currency: "EUR".into(),
            stock: 10,
        }
    }

    /// A stored product with the given id, currency, price and stock, at version 1.
    pub(crate) fn stored(id: Uuid, currency: &str, price_cents: i64, stock: i64) -> Product {
        Product::create(
            id,
            NewProduct {
                currency: currency.into(),
                price_cents,
                stock,
                sku: format!("SKU-{}", id.simple()),
                ..new_product()
            },
            t0(),
        )
        .unwrap()
        .0
    }

    fn product() -> Product {
        Product::create(Uuid::now_v7(), new_product(), t0()).unwrap().0
    }

    fn fields(err: DomainError) -> Vec<String> {
        match err {
            DomainError::Validation(errors) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    fn assert_event(event: &Recorded, kind: EventKind, product: &Product) {
        assert_eq!(event.kind(), kind);
        assert_eq!(event.aggregate_id(), product.id());
        assert_eq!(event.sequence(), product.version());
        assert_eq!(event, &Recorded::Product(kind, product.state().clone()));
    }

    #[test]
    fn create_makes_version_1_and_records_product_created() {
        let id = Uuid::now_v7();
        let (p, event) = Product::create(id, new_product(), t0()).unwrap();
        assert_eq!(p.id(), id);
        assert_eq!(p.version(), 1);
        let s = p.state();
        assert_eq!(
            (s.sku.as_str(), s.name.as_str(), s.description.as_str()),
            ("WIDGET-1", "Widget", "A widget")
        );
        assert_eq!((s.price_cents, s.currency.as_str(), s.stock), (1_250, "EUR", 10));
        assert_eq!((s.created_at, s.updated_at), (t0(), t0()));
        assert_event(&event, EventKind::ProductCreated, &p);
    }

    #[test]
    fn create_without_description_stores_an_empty_one() {
        let input = NewProduct {
            description: None,
            ..new_product()
        };
        let (p, _) = Product::create(Uuid::now_v7(), input, t0()).unwrap();
        assert_eq!(p.state().description, "");
    }

    #[test]
    fn create_accepts_every_field_at_its_bounds() {
        for (sku, name, description, price, currency, stock) in [
            ("a", "n", "", 0, "AAA", 0),
            (
                &*"s".repeat(64),
                &*"é".repeat(200),
                &*"é".repeat(2_000),
                values::PRICE_CENTS_MAX,
                "ZZZ",
                values::STOCK_MAX,
            ),
        ] {
            let input = NewProduct {
                sku: sku.into(),
                name: name.into(),
                description: Some(description.into()),
                price_cents: price,
                currency: currency.into(),
                stock,
            };
            Product::create(Uuid::now_v7(), input, t0()).unwrap();
        }
    }

    #[test]
    fn create_collects_every_field_error() {
        let input = NewProduct {
            sku: "".into(),
            name: "x".repeat(201),
            description: Some("a\0b".into()),
            price_cents: values::PRICE_CENTS_MAX + 1,
            currency: "eur".into(),
            stock: -1,
        };
        let err = Product::create(Uuid::now_v7(), input, t0()).unwrap_err();
        assert_eq!(
            fields(err),
            ["sku", "name", "description", "price_cents", "currency", "stock"]
        );
    }

    #[test]
    fn create_refuses_each_field_just_beyond_its_bounds() {
        let cases: Vec<(&str, NewProduct)> = vec![
            (
                "sku",
                NewProduct {
                    sku: "s".repeat(65),
                    ..new_product()
                },
            ),
            (
                "sku",
                NewProduct {
                    sku: "bad sku".into(),
                    ..new_product()
                },
            ),
            (
                "sku",
                NewProduct {
                    sku: "a\0".into(),
                    ..new_product()
                },
            ),
            (
                "name",
                NewProduct {
                    name: "".into(),
                    ..new_product()
                },
            ),
            (
                "name",
                NewProduct {
                    name: "\0".into(),
                    ..new_product()
                },
            ),
            (
                "description",
                NewProduct {
                    description: Some("d".repeat(2_001)),
                    ..new_product()
                },
            ),
            (
                "price_cents",
                NewProduct {
                    price_cents: -1,
                    ..new_product()
                },
            ),
            (
                "currency",
                NewProduct {
                    currency: "EURO".into(),
                    ..new_product()
                },
            ),
            (
                "stock",
                NewProduct {
                    stock: values::STOCK_MAX + 1,
                    ..new_product()
                },
            ),
        ];
        for (field, input) in cases {
            let err = Product::create(Uuid::now_v7(), input, t0()).unwrap_err();
            assert_eq!(fields(err), [field]);
        }
    }

    #[test]
    fn update_changes_given_fields_and_bumps_version() {
        let mut p = product();
        let later = t0() + TimeDelta::seconds(5);
        let event = p
            .update(
                ProductChanges {
                    name: Some("Gadget".into()),
                    price_cents: Some(99),
                    ..Default::default()
                },
                later,
            )
            .unwrap()
            .expect("a change");
        assert_eq!(p.version(), 2);
        assert_eq!(p.state().name, "Gadget");
        assert_eq!(p.state().price_cents, 99);
        assert_eq!(p.state().description, "A widget");
        assert_eq!(p.state().created_at, t0());
        assert_eq!(p.state().updated_at, later);
        assert_event(&event, EventKind::ProductUpdated, &p);

        let event = p
            .update(
                ProductChanges {
                    description: Some(String::new()),
                    ..Default::default()
                },
                later,
            )
            .unwrap()
            .expect("a change");
        assert_eq!(p.state().description, "");
        assert_eq!(event.sequence(), 3);
    }

    #[test]
    fn update_restating_current_values_records_nothing() {
        let mut p = product();
        let before = p.clone();
        let s = before.state();
        for changes in [
            ProductChanges {
                name: Some(s.name.clone()),
                description: Some(s.description.clone()),
                price_cents: Some(s.price_cents),
            },
            ProductChanges {
                price_cents: Some(s.price_cents),
                ..Default::default()
            },
        ] {
            assert_eq!(p.update(changes, t0() + TimeDelta::seconds(5)), Ok(None));
            assert_eq!(p, before, "version and updated_at kept");
        }
        // One changed field among restated ones is a change.
        let event = p
            .update(
                ProductChanges {
                    name: Some(s.name.clone()),
                    price_cents: Some(s.price_cents + 1),
                    ..Default::default()
                },
                t0(),
            )
            .unwrap();
        assert_eq!(event.map(|e| e.sequence()), Some(2));
        // A zero delta is still refused: the contract asks for a non-zero one.
        assert_eq!(fields(p.adjust_stock(0, None, t0()).unwrap_err()), ["delta"]);
    }

    #[test]
    fn update_without_any_field_is_refused() {
        let mut p = product();
        let before = p.clone();
        let err = p.update(ProductChanges::default(), t0()).unwrap_err();
        assert_eq!(fields(err), ["body"]);
        assert_eq!(p, before);
    }

    #[test]
    fn update_collects_errors_and_changes_nothing() {
        let mut p = product();
        let before = p.clone();
        let err = p
            .update(
                ProductChanges {
                    name: Some("".into()),
                    description: Some("x".repeat(2_001)),
                    price_cents: Some(-1),
                },
                t0(),
            )
            .unwrap_err();
        assert_eq!(fields(err), ["name", "description", "price_cents"]);
        assert_eq!(p, before);

        // One bad field refuses the good ones with it.
        let err = p
            .update(
                ProductChanges {
                    name: Some("Fine".into()),
                    price_cents: Some(values::PRICE_CENTS_MAX + 1),
                    ..Default::default()
                },
                t0(),
            )
            .unwrap_err();
        assert_eq!(fields(err), ["price_cents"]);
        assert_eq!(p, before);
    }

    #[test]
    fn update_accepts_price_at_bounds() {
        let mut p = product();
        for price in [0, values::PRICE_CENTS_MAX] {
            assert_ne!(p.state().price_cents, price);
            p.update(
                ProductChanges {
                    price_cents: Some(price),
                    ..Default::default()
                },
                t0(),
            )
            .unwrap();
            assert_eq!(p.state().price_cents, price);
        }
        assert_eq!(p.version(), 3);
    }

    #[test]
    fn adjust_stock_up_and_down() {
        let mut p = product();
        let event = p.adjust_stock(5, Some("restock"), t0()).unwrap();
        assert_eq!(p.state().stock, 15);
        assert_eq!(p.version(), 2);
        assert_event(&event, EventKind::ProductStockChanged, &p);

        let event = p.adjust_stock(-15, None, t0()).unwrap();
        assert_eq!(p.state().stock, 0);
        assert_eq!(event.sequence(), 3);
    }

    #[test]
    fn adjust_stock_below_zero_is_insufficient_stock() {
        let mut p = product();
        let before = p.clone();
        let err = p.adjust_stock(-11, None, t0()).unwrap_err();
        assert_eq!(
            err,
            DomainError::InsufficientStock {
                product_id: p.id(),
                available: 10,
                requested: 11
            }
        );
        assert_eq!(p, before);
    }

    #[test]
    fn adjust_stock_delta_bounds() {
        let mut p = product();
        let before = p.clone();
        for bad in [0, values::DELTA_MAX + 1, -values::DELTA_MAX - 1, i64::MIN, i64::MAX] {
            let err = p.adjust_stock(bad, None, t0()).unwrap_err();
            assert_eq!(fields(err), ["delta"], "delta {bad}");
            assert_eq!(p, before);
        }
        // The largest delta is legal in itself; it fails only on the resulting stock.
        let err = p.adjust_stock(values::DELTA_MAX, None, t0()).unwrap_err();
        assert_eq!(fields(err), ["delta"]);
        assert_eq!(p, before);
        p.adjust_stock(values::DELTA_MAX - 10, None, t0()).unwrap();
        assert_eq!(p.state().stock, values::STOCK_MAX);
        p.adjust_stock(-values::DELTA_MAX, None, t0()).unwrap();
        assert_eq!(p.state().stock, 0);
    }

    #[test]
    fn adjust_stock_reason_bounds_and_error_collection() {
        let mut p = product();
        p.adjust_stock(1, Some(&"r".repeat(500)), t0()).unwrap();
        p.adjust_stock(1, Some(""), t0()).unwrap();
        let before = p.clone();
        let err = p.adjust_stock(1, Some(&"r".repeat(501)), t0()).unwrap_err();
        assert_eq!(fields(err), ["reason"]);
        let err = p.adjust_stock(0, Some("a\0"), t0()).unwrap_err();
        assert_eq!(fields(err), ["delta", "reason"]);
        assert_eq!(p, before);
    }

    #[test]
    fn adjust_stock_on_a_corrupt_state_does_not_wrap() {
        let mut state = product().state().clone();
        state.stock = i64::MAX;
        let mut p = Product::from_state(state);
        let before = p.clone();
        assert_eq!(fields(p.adjust_stock(1, None, t0()).unwrap_err()), ["delta"]);
        assert_eq!(p, before);
    }

    #[test]
    fn reserve_takes_stock_down_to_zero_but_not_below() {
        let mut p = product();
        let event = p.reserve(4, t0()).unwrap();
        assert_eq!(p.state().stock, 6);
        assert_event(&event, EventKind::ProductStockChanged, &p);
        p.reserve(6, t0()).unwrap();
        assert_eq!(p.state().stock, 0);
        assert_eq!(p.version(), 3);
        let before = p.clone();
        assert_eq!(
            p.reserve(1, t0()).unwrap_err(),
            DomainError::InsufficientStock {
                product_id: p.id(),
                available: 0,
                requested: 1
            }
        );
        assert_eq!(p, before);
    }

    #[test]
    fn reserve_refuses_non_positive_quantities() {
        let mut p = product();
        let before = p.clone();
        for q in [0, -1, i64::MIN] {
            assert_eq!(fields(p.reserve(q, t0()).unwrap_err()), ["quantity"]);
        }
        assert_eq!(p, before);
    }

    #[test]
    fn release_gives_stock_back() {
        let mut p = product();
        p.reserve(10, t0()).unwrap();
        let later = t0() + TimeDelta::minutes(1);
        let event = p.release(10, later);
        assert_eq!(p.state().stock, 10);
        assert_eq!(p.version(), 3);
        assert_eq!(p.state().updated_at, later);
        assert_event(&event, EventKind::ProductStockChanged, &p);
    }

    #[test]
    fn release_never_makes_stock_negative_nor_overflows() {
        let mut p = product();
        p.release(-100, t0());
        assert_eq!(p.state().stock, 10);
        let mut state = p.state().clone();
        state.stock = i64::MAX - 1;
        let mut p = Product::from_state(state);
        p.release(5, t0());
        assert_eq!(p.state().stock, i64::MAX);
    }

    #[test]
    fn stock_returned_above_the_limit_can_still_be_lowered() {
        let mut p = product();
        p.adjust_stock(values::STOCK_MAX - 10, None, t0()).unwrap();
        p.release(8, t0());
        assert_eq!(p.state().stock, values::STOCK_MAX + 8);
        assert_eq!(fields(p.adjust_stock(1, None, t0()).unwrap_err()), ["delta"]);
        p.adjust_stock(-1, None, t0()).unwrap();
        assert_eq!(p.state().stock, values::STOCK_MAX + 7);
    }

    #[test]
    fn from_state_round_trips() {
        let p = product();
        let again = Product::from_state(p.state().clone());
        assert_eq!(again, p);
    }
}
