//! `GET /v1/products/{id}` and `GET /v1/products`.

use axum::extract::{RawQuery, Request, State};
use axum::http::HeaderMap;
use axum::response::Response;
use ordering_platform::http::path::PathId;
use ordering_platform::problem::Problem;
use ordering_schema::events::{AggregateType, ProductData};
use uuid::Uuid;

use super::schemas::ProductPage;
use super::{
    answer, await_consistency, consistency_marks, consistent_view, etag_of_body, limit_param, page_body, query_params,
};
use crate::app::AppState;
use crate::cache::Source;
use crate::error::{ReadError, field};
use crate::views::{self, ProductFilter, ProductKey, ProductSort};

/// Reads one product view.
#[utoipa::path(
    get, path = "/v1/products/{id}", tag = "catalog",
    params(
        ("id" = uuid::Uuid, Path, description = "the product's id (anything but a UUID is 404)"),
        ("X-Consistency-Token" = Option<String>, Header, description = "wait until the views reflect this command"),
        ("If-None-Match" = Option<String>, Header),
    ),
    responses(
        (status = 200, body = ProductData, headers(("ETag" = String), ("X-Cache" = String))),
        (status = 304), (status = 400, body = Problem), (status = 404, body = Problem), (status = 503, body = Problem),
    )
)]
pub async fn get_product(
    State(app): State<AppState>,
    PathId(id): PathId,
    request: Request,
) -> Result<Response, ReadError> {
    // The headers are read in place (a `HeaderMap` argument would be a copy).
    let headers = request.headers();
    let (entry, source) = consistent_view(&app, headers, None, AggregateType::Product, &id).await?;
    Ok(answer(headers, entry.body, entry.etag, source))
}

/// Query parameters of `GET /v1/products`.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct ProductListParams {
    /// White-space separated terms; each must occur in the sku, name or description.
    search: Option<String>,
    min_price: Option<i64>,
    max_price: Option<i64>,
    in_stock: Option<bool>,
    /// `name` (default), `price` or `-price`.
    sort: Option<String>,
    /// 1 to 100, default 20.
    limit: Option<i64>,
    cursor: Option<String>,
}

/// Lists products, filtered and sorted, a page at a time (keyset cursors). With a consistency
/// token, the page is read once the views reflect the products it names.
#[utoipa::path(
    get, path = "/v1/products", tag = "catalog",
    params(
        ProductListParams,
        ("X-Consistency-Token" = Option<String>, Header, description = "wait until the views reflect this command"),
        ("If-None-Match" = Option<String>, Header),
    ),
    responses(
        (status = 200, body = ProductPage, headers(("ETag" = String), ("X-Cache" = String))),
        (status = 304), (status = 400, body = Problem), (status = 422, body = Problem), (status = 503, body = Problem),
    )
)]
pub async fn list_products(
    State(app): State<AppState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ReadError> {
    let marks = consistency_marks(&app, &headers, None)?;
    let q = query_params(
        raw.as_deref(),
        &[
            "search",
            "min_price",
            "max_price",
            "in_stock",
            "sort",
            "limit",
            "cursor",
        ],
    )?;
    let mut errors = Vec::new();
    let limit = limit_param(&q, &mut errors);
    let mut price = |name: &str| match q.get(name) {
        None => None,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (0..=1_000_000_000_000).contains(&n) => Some(n),
            _ => {
                errors.push(field(name, "must be an integer from 0 to 10^12"));
                None
            }
        },
    };
    let min_price = price("min_price");
    let max_price = price("max_price");
    let in_stock = match q.get("in_stock").map(String::as_str) {
        None => None,
        Some("true") => Some(true),
        Some("false") => Some(false),
        Some(_) => {
            errors.push(field("in_stock", "must be true or false"));
            None
        }
    };
    let sort = match q.get("sort").map(String::as_str) {
        None | Some("name") => ProductSort::Name,
        Some("price") => ProductSort::Price,
        Some("-price") => ProductSort::PriceDesc,
        Some(_) => {
            errors.push(field("sort", "must be name, price or -price"));
            ProductSort::Name
        }
    };
    let search = q.get("search").map(String::as_str).unwrap_or("");
    if search.chars().count() > 200 {
        errors.push(field("search", "must be at most 200 characters"));
    }
    let terms: Vec<String> = search.split_whitespace().map(str::to_owned).collect();
    if terms.len() > 10 {
        errors.push(field("search", "must have at most 10 terms"));
    }
    let filter = ProductFilter {
        terms,
        min_price,
        max_price,
        in_stock,
    };
    // The cursor is only good for the query it was issued for.
    let scope = format!(
        "products|{sort:?}|{}|{min_price:?}|{max_price:?}|{in_stock:?}",
        filter.terms.join(" ")
    );
    let after = match q.get("cursor") {
        None => None,
        Some(c) => match app.cursors.decode::<(ProductKey, Uuid)>(c, &scope) {
            Some(k) => Some(k),
            None => {
                errors.push(field("cursor", "not a cursor issued for this query"));
                None
            }
        },
    };
    if !errors.is_empty() {
        return Err(ReadError::Validation(errors));
    }
    await_consistency(&app, marks.as_deref()).await?;
    let mut conn = app.pool.get().await?;
    let mut rows = views::products(&mut conn, &filter, sort, after, limit + 1).await?;
    drop(conn);
    let more = rows.len() as i64 > limit;
    rows.truncate(usize::try_from(limit).unwrap_or(20));
    let next = match (more, rows.last()) {
        (true, Some(last)) => {
            let key = match sort {
                ProductSort::Name => ProductKey::Name(last.name.clone()),
                ProductSort::Price | ProductSort::PriceDesc => ProductKey::Price(last.price_cents),
            };
            Some(app.cursors.encode(&(key, last.id), &scope))
        }
        _ => None,
    };
    let body = page_body(rows.iter().map(|r| r.doc.as_str()), next);
    let etag = etag_of_body(&body);
    // Catalog pages are read from PostgreSQL every time (see the crate docs for why).
    Ok(answer(&headers, body, etag, Source::Miss))
}
