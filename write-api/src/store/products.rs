//! Products in PostgreSQL: the only code that speaks SQL about them.

use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use ordering_schema::events::ProductData;
use ordering_schema::schema::products;
use uuid::Uuid;

use crate::domain::Product;

#[derive(Queryable, Selectable, Insertable)]
#[diesel(table_name = products, check_for_backend(diesel::pg::Pg))]
struct ProductRow {
    id: Uuid,
    sku: String,
    name: String,
    description: String,
    price_cents: i64,
    currency: String,
    stock: i64,
    version: i64,
    created_at: chrono::DateTime<chrono::Utc>,
    updated_at: chrono::DateTime<chrono::Utc>,
}

impl From<ProductRow> for Product {
    fn from(r: ProductRow) -> Self {
        Product::from_state(ProductData {
            id: r.id,
            sku: r.sku,
            name: r.name,
            description: r.description,
            price_cents: r.price_cents,
            currency: r.currency,
            stock: r.stock,
            version: r.version,
            created_at: r.created_at,
            updated_at: r.updated_at,
        })
    }
}

impl From<&ProductData> for ProductRow {
    fn from(p: &ProductData) -> Self {
        Self {
            id: p.id,
            sku: p.sku.clone(),
            name: p.name.clone(),
            description: p.description.clone(),
            price_cents: p.price_cents,
            currency: p.currency.clone(),
            stock: p.stock,
            version: p.version,
            created_at: p.created_at,
            updated_at: p.updated_at,
        }
    }
}

/// Stores a new product (a taken sku fails on `products_sku_key`).
pub async fn insert(conn: &mut AsyncPgConnection, product: &Product) -> QueryResult<()> {
    diesel::insert_into(products::table)
        .values(ProductRow::from(product.state()))
        .execute(conn)
        .await?;
    Ok(())
}

/// Loads a product and locks it until the transaction ends.
pub async fn lock(conn: &mut AsyncPgConnection, id: Uuid) -> QueryResult<Option<Product>> {
    products::table
        .find(id)
        .select(ProductRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
        .map(|r| r.map(Product::from))
}

/// Loads and locks the products with `ids`, in ascending id order, so that two transactions
/// locking overlapping sets always take the locks in the same order and cannot deadlock.
/// Ids that do not exist are simply absent from the result.
pub async fn lock_many(conn: &mut AsyncPgConnection, ids: &[Uuid]) -> QueryResult<Vec<Product>> {
    products::table
        .filter(products::id.eq_any(ids))
        .order(products::id.asc())
        .select(ProductRow::as_select())
        .for_update()
        .load(conn)
        .await
        .map(|rows| rows.into_iter().map(Product::from).collect())
}

/// Writes a changed product back. The row is locked by this transaction, so the version
/// check can only fail if a caller forgot to lock it: then nothing is written.
pub async fn save(conn: &mut AsyncPgConnection, product: &Product) -> QueryResult<()> {
    let p = product.state();
    let n = diesel::update(products::table.find(p.id).filter(products::version.eq(p.version - 1)))
        .set((
            products::name.eq(&p.name),
            products::description.eq(&p.description),
            products::price_cents.eq(p.price_cents),
            products::stock.eq(p.stock),
            products::version.eq(p.version),
            products::updated_at.eq(p.updated_at),
        ))
        .execute(conn)
        .await?;
    if n == 1 {
        Ok(())
    } else {
        Err(diesel::result::Error::NotFound)
    }
}
