-- The write side: the two aggregates, the outbox that carries their events, and the
-- idempotency records of commands. CHECK constraints repeat the domain's invariants so that
-- no code path, present or future, can store a state the aggregates would refuse.

CREATE TABLE products (
  id           uuid        PRIMARY KEY,
  sku          text        NOT NULL,
  name         text        NOT NULL,
  description  text        NOT NULL DEFAULT '',
  price_cents  bigint      NOT NULL CHECK (price_cents >= 0),
  currency     char(3)     NOT NULL,
  stock        bigint      NOT NULL CHECK (stock >= 0),
  version      bigint      NOT NULL CHECK (version >= 1),
  created_at   timestamptz NOT NULL,
  updated_at   timestamptz NOT NULL,
  CONSTRAINT products_sku_key UNIQUE (sku)
);

CREATE TABLE orders (
  id                uuid        PRIMARY KEY,
  customer_id       uuid        NOT NULL,
  status            text        NOT NULL CHECK (status IN ('placed', 'paid', 'shipped', 'cancelled')),
  currency          char(3)     NOT NULL,
  total_cents       bigint      NOT NULL CHECK (total_cents >= 0),
  payment_reference text,
  cancel_reason     text,
  version           bigint      NOT NULL CHECK (version >= 1),
  created_at        timestamptz NOT NULL,
  updated_at        timestamptz NOT NULL
);
CREATE INDEX orders_customer_id_idx ON orders (customer_id);

CREATE TABLE order_lines (
  order_id          uuid    NOT NULL REFERENCES orders (id),
  line_no           integer NOT NULL,
  product_id        uuid    NOT NULL REFERENCES products (id),
  sku               text    NOT NULL,
  name              text    NOT NULL,
  unit_price_cents  bigint  NOT NULL CHECK (unit_price_cents >= 0),
  quantity          bigint  NOT NULL CHECK (quantity BETWEEN 1 AND 10000),
  line_total_cents  bigint  NOT NULL CHECK (line_total_cents >= 0),
  PRIMARY KEY (order_id, line_no),
  CONSTRAINT order_lines_one_product_per_order UNIQUE (order_id, product_id)
);

-- The contract's outbox table (docs/sidecar.md, "The table"), exactly.
CREATE TABLE outbox (
  id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  event_id          uuid        NOT NULL UNIQUE,
  aggregate_type    text        NOT NULL,
  aggregate_id      text        NOT NULL,
  sequence          bigint      NOT NULL,
  event_type        text        NOT NULL,
  payload           jsonb       NOT NULL,
  headers           jsonb       NOT NULL DEFAULT '{}',
  created_at        timestamptz NOT NULL DEFAULT now()
);

-- A command's Idempotency-Key, scoped to the caller and the request target. The row is
-- inserted in the command's own transaction, so a concurrent repeat blocks on the unique key
-- until the first commits (then replays its answer) or rolls back (then runs itself).
CREATE TABLE idempotency_keys (
  caller          text        NOT NULL,
  target          text        NOT NULL,
  key             text        NOT NULL,
  request_hash    bytea       NOT NULL,
  response_status smallint    NOT NULL,
  response_headers jsonb      NOT NULL,
  response_body   jsonb       NOT NULL,
  created_at      timestamptz NOT NULL DEFAULT now(),
  PRIMARY KEY (caller, target, key)
);
CREATE INDEX idempotency_keys_created_at_idx ON idempotency_keys (created_at);
