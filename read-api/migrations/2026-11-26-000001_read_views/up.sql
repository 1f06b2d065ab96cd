-- The read side's views. Names start with rv_ because READ_DATABASE_URL may be the write
-- side's database. Every row carries the version of the aggregate it reflects: that is what
-- makes applying an event idempotent.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE rv_products (
    id          uuid   PRIMARY KEY,
    version     bigint NOT NULL,
    name        text   NOT NULL,
    price_cents bigint NOT NULL,
    stock       bigint NOT NULL,
    -- lower(sku || ' ' || name || ' ' || description): what `search` terms are matched in.
    search      text   NOT NULL,
    -- The product view exactly as served.
    doc         jsonb  NOT NULL
);
-- Trigram index: `search LIKE '%term%'` uses it, whatever the term's position.
CREATE INDEX rv_products_search ON rv_products USING gin (search gin_trgm_ops);
-- Keyset pagination per sort order.
CREATE INDEX rv_products_by_name ON rv_products (name, id);
CREATE INDEX rv_products_by_price ON rv_products (price_cents, id);

CREATE TABLE rv_orders (
    id          uuid        PRIMARY KEY,
    customer_id uuid        NOT NULL,
    version     bigint      NOT NULL,
    status      text        NOT NULL,
    total_cents bigint      NOT NULL,
    currency    text        NOT NULL,
    created_at  timestamptz NOT NULL,
    -- The order view as served (order fields plus history).
    doc         jsonb       NOT NULL,
    -- The item of the customer's order list.
    item        jsonb       NOT NULL
);
CREATE INDEX rv_orders_by_customer ON rv_orders (customer_id, created_at DESC, id DESC);

-- One row per customer: a revision bumped by every order event of the customer, in the same
-- statement, so a snapshot's revision says exactly which changes the customer's list and
-- summary contain (the cache keys on it).
CREATE TABLE rv_customers (
    customer_id uuid   PRIMARY KEY,
    revision    bigint NOT NULL
);
