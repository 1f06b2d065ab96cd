//! The input rules of the contract ("Details that settle common questions"), one function per
//! rule, and [`Checks`], which gathers the refusals of a whole request.
//!
//! A rule answers `Err(message)` with a short message that names the limit; the caller attaches
//! the field's path, because the same rule can apply to differently named fields (`reason` of a
//! stock adjustment and of a cancellation, `lines[i].quantity`). Lengths count Unicode scalar
//! values, not bytes, so a limit means the same thing to a client in any language.

use super::error::{DomainError, FieldError};

/// The outcome of one rule: `Err` holds the message for the refused field.
pub type Rule = Result<(), &'static str>;

/// Longest `sku`, in characters.
pub const SKU_MAX_CHARS: usize = 64;
/// Longest product `name`, in characters.
pub const NAME_MAX_CHARS: usize = 200;
/// Longest product `description`, in characters.
pub const DESCRIPTION_MAX_CHARS: usize = 2_000;
/// Longest `payment_reference`, in characters.
pub const PAYMENT_REFERENCE_MAX_CHARS: usize = 200;
/// Longest `reason` (stock adjustment, cancellation), in characters.
pub const REASON_MAX_CHARS: usize = 500;
/// Highest `price_cents`.
pub const PRICE_CENTS_MAX: i64 = 1_000_000_000_000;
/// Highest `stock` (on creation, and as the result of a stock adjustment).
pub const STOCK_MAX: i64 = 1_000_000_000;
/// Largest magnitude of a stock adjustment's `delta`.
pub const DELTA_MAX: i64 = 1_000_000_000;
/// Most lines in one order.
pub const LINES_MAX: usize = 100;
/// Highest `quantity` of one order line.
pub const QUANTITY_MAX: i64 = 10_000;

const NUL_MESSAGE: &str = "must not contain a NUL character";

/// No string may carry a NUL: PostgreSQL `text` cannot store one, so it would otherwise fail
/// as a 500 deep inside the write instead of a 422 here.
pub fn no_nul(value: &str) -> Rule {
    if value.contains('\0') { Err(NUL_MESSAGE) } else { Ok(()) }
}

fn chars_within(value: &str, min: usize, max: usize) -> bool {
    // Counting stops one past the limit, so an oversized value costs no more than max + 1 steps.
    let n = value.chars().take(max + 1).count();
    (min..=max).contains(&n)
}

/// `sku`: 1 to 64 characters, each a letter, digit, `.`, `_` or `-` (ASCII).
pub fn sku(value: &str) -> Rule {
    no_nul(value)?;
    if !chars_within(value, 1, SKU_MAX_CHARS) {
        return Err("must be 1 to 64 characters");
    }
    if !value
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err("may contain only ASCII letters, digits, '.', '_' and '-'");
    }
    Ok(())
}

/// Product `name`: 1 to 200 characters.
pub fn name(value: &str) -> Rule {
    no_nul(value)?;
    if !chars_within(value, 1, NAME_MAX_CHARS) {
        return Err("must be 1 to 200 characters");
    }
    Ok(())
}

/// Product `description`: at most 2,000 characters (empty is allowed).
pub fn description(value: &str) -> Rule {
    no_nul(value)?;
    if !chars_within(value, 0, DESCRIPTION_MAX_CHARS) {
        return Err("must be at most 2000 characters");
    }
    Ok(())
}

/// `payment_reference`: 1 to 200 characters.
pub fn payment_reference(value: &str) -> Rule {
    no_nul(value)?;
    if !chars_within(value, 1, PAYMENT_REFERENCE_MAX_CHARS) {
        return Err("must be 1 to 200 characters");
    }
    Ok(())
}

/// `reason` of a stock adjustment or a cancellation: at most 500 characters.
pub fn reason(value: &str) -> Rule {
    no_nul(value)?;
    if !chars_within(value, 0, REASON_MAX_CHARS) {
        return Err("must be at most 500 characters");
    }
    Ok(())
}

/// `currency`: exactly three upper-case ASCII letters (the shape of an ISO 4217 code).
pub fn currency(value: &str) -> Rule {
    no_nul(value)?;
    if value.len() != 3 || !value.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err("must be three upper-case letters (ISO 4217)");
    }
    Ok(())
}

/// `price_cents`: 0 to 10^12.
pub fn price_cents(value: i64) -> Rule {
    if !(0..=PRICE_CENTS_MAX).contains(&value) {
        return Err("must be 0 to 1000000000000");
    }
    Ok(())
}

/// `stock` of a new product: 0 to 10^9.
pub fn stock(value: i64) -> Rule {
    if !(0..=STOCK_MAX).contains(&value) {
        return Err("must be 0 to 1000000000");
    }
    Ok(())
}

/// `delta` of a stock adjustment: non-zero, within ±10^9. An adjustment states a change, and
/// the contract requires one: a zero delta is refused rather than answered as a no-op (unlike a
/// `PATCH` restating current values, see the [`product`](super::product) module doc).
pub fn delta(value: i64) -> Rule {
    if value == 0 || !(-DELTA_MAX..=DELTA_MAX).contains(&value) {
        return Err("must be a non-zero integer from -1000000000 to 1000000000");
    }
    Ok(())
}

/// Number of `lines` of an order: 1 to 100.
pub fn line_count(count: usize) -> Rule {
    if !(1..=LINES_MAX).contains(&count) {
        return Err("must have 1 to 100 lines");
    }
    Ok(())
}

/// `quantity` of an order line: 1 to 10,000.
pub fn quantity(value: i64) -> Rule {
    if !(1..=QUANTITY_MAX).contains(&value) {
        return Err("must be 1 to 10000");
    }
    Ok(())
}

/// Gathers the refusals of one request, so that every bad field is reported at once.
#[derive(Debug, Default)]
pub struct Checks(Vec<FieldError>);

impl Checks {
    /// No refusal yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records a refusal of `field` if `rule` failed.
    pub fn check(&mut self, field: impl Into<String>, rule: Rule) {
        if let Err(message) = rule {
            self.push(field, message);
        }
    }

    /// Records a refusal of `field` that no single rule covers (e.g. a cross-field one).
    pub fn push(&mut self, field: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError::new(field, message));
    }

    /// Whether nothing was refused so far.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `Ok` if nothing was refused, else a [`DomainError::Validation`] with every refusal, in
    /// the order they were found.
    pub fn finish(self) -> Result<(), DomainError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(DomainError::Validation(self.0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chars(c: char, n: usize) -> String {
        std::iter::repeat_n(c, n).collect()
    }

    /// Every length limit must name its number, or the client cannot know what to fix.
    fn assert_names(rule: Rule, limit: impl ToString) {
        let message = rule.expect_err("rule should refuse");
        assert!(
            message.contains(&limit.to_string()),
            "{message:?} does not name {}",
            limit.to_string()
        );
    }

    #[test]
    fn sku_bounds_and_charset() {
        assert_names(sku(""), SKU_MAX_CHARS);
        assert_eq!(sku("a"), Ok(()));
        assert_eq!(sku(&chars('a', 64)), Ok(()));
        assert_names(sku(&chars('a', 65)), SKU_MAX_CHARS);
        assert_eq!(sku("AZaz09._-"), Ok(()));
        for bad in ["a b", "a/b", "é", "a+b", "ab\u{200b}", "ß"] {
            assert!(sku(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(sku("a\0b"), Err(NUL_MESSAGE));
    }

    #[test]
    fn name_bounds_count_characters_not_bytes() {
        assert_names(name(""), NAME_MAX_CHARS);
        assert_eq!(name("x"), Ok(()));
        // 200 three-byte characters: 600 bytes, still within the limit.
        assert_eq!(name(&chars('€', 200)), Ok(()));
        assert_names(name(&chars('€', 201)), NAME_MAX_CHARS);
        assert_eq!(name("a\0"), Err(NUL_MESSAGE));
    }

    #[test]
    fn description_bounds() {
        assert_eq!(description(""), Ok(()));
        assert_eq!(description(&chars('ü', 2_000)), Ok(()));
        assert_names(description(&chars('ü', 2_001)), DESCRIPTION_MAX_CHARS);
        assert_eq!(description("\0"), Err(NUL_MESSAGE));
    }

    #[test]
    fn payment_reference_bounds() {
        assert_names(payment_reference(""), PAYMENT_REFERENCE_MAX_CHARS);
        assert_eq!(payment_reference("p"), Ok(()));
        assert_eq!(payment_reference(&chars('😀', 200)), Ok(()));
        assert_names(payment_reference(&chars('😀', 201)), PAYMENT_REFERENCE_MAX_CHARS);
        assert_eq!(payment_reference("pay\0"), Err(NUL_MESSAGE));
    }

    #[test]
    fn reason_bounds() {
        assert_eq!(reason(""), Ok(()));
        assert_eq!(reason(&chars('ж', 500)), Ok(()));
        assert_names(reason(&chars('ж', 501)), REASON_MAX_CHARS);
        assert_eq!(reason("\0"), Err(NUL_MESSAGE));
    }

    #[test]
    fn currency_is_three_upper_case_ascii_letters() {
        assert_eq!(currency("EUR"), Ok(()));
        assert_eq!(currency("USD"), Ok(()));
        for bad in ["", "EU", "EURO", "eur", "Eur", "E1R", "ÄUR", "E R", "EU\0"] {
            assert!(currency(bad).is_err(), "{bad:?} accepted");
        }
        assert!(currency("E").unwrap_err().contains("three"));
    }

    #[test]
    fn price_cents_bounds() {
        assert_names(price_cents(-1), PRICE_CENTS_MAX);
        assert_eq!(price_cents(0), Ok(()));
        assert_eq!(price_cents(PRICE_CENTS_MAX), Ok(()));
        assert_names(price_cents(PRICE_CENTS_MAX + 1), PRICE_CENTS_MAX);
        assert!(price_cents(i64::MIN).is_err());
        assert!(price_cents(i64::MAX).is_err());
    }

    #[test]
    fn stock_bounds() {
        assert_names(stock(-1), STOCK_MAX);
        assert_eq!(stock(0), Ok(()));
        assert_eq!(stock(STOCK_MAX), Ok(()));
        assert_names(stock(STOCK_MAX + 1), STOCK_MAX);
    }

    #[test]
    fn delta_bounds() {
        assert!(delta(0).is_err());
        assert_eq!(delta(1), Ok(()));
        assert_eq!(delta(-1), Ok(()));
        assert_eq!(delta(DELTA_MAX), Ok(()));
        assert_eq!(delta(-DELTA_MAX), Ok(()));
        assert_names(delta(DELTA_MAX + 1), DELTA_MAX);
        assert_names(delta(-DELTA_MAX - 1), DELTA_MAX);
        assert!(delta(i64::MIN).is_err());
        assert!(delta(i64::MAX).is_err());
    }

    #[test]
    fn line_count_bounds() {
        assert_names(line_count(0), LINES_MAX);
        assert_eq!(line_count(1), Ok(()));
        assert_eq!(line_count(LINES_MAX), Ok(()));
        assert_names(line_count(LINES_MAX + 1), LINES_MAX);
    }

    #[test]
    fn quantity_bounds() {
        assert_names(quantity(0), QUANTITY_MAX);
        assert!(quantity(-1).is_err());
        assert_eq!(quantity(1), Ok(()));
        assert_eq!(quantity(QUANTITY_MAX), Ok(()));
        assert_names(quantity(QUANTITY_MAX + 1), QUANTITY_MAX);
    }

    #[test]
    fn checks_collect_every_refusal_in_order() {
        let mut checks = Checks::new();
        checks.check("sku", sku(""));
        checks.check("name", name("ok"));
        checks.check("stock", stock(-5));
        checks.push("lines", "custom");
        assert!(!checks.is_empty());
        let Err(DomainError::Validation(errors)) = checks.finish() else {
            panic!("expected a validation error");
        };
        let fields: Vec<_> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["sku", "stock", "lines"]);
        assert_eq!(errors[2].message, "custom");
        assert_eq!(Checks::new().finish(), Ok(()));
    }
}
