-- Events that arrived before their predecessor was applied (a gap). They are parked here and
-- acknowledged, so they leave the broker's prefetch window; the transaction that applies the
-- predecessor applies them. `body` is the message as delivered, so a gap that never fills can
-- be dead-lettered exactly as it came.
CREATE TABLE rv_parked (
    aggregate   text        NOT NULL,
    id          uuid        NOT NULL,
    sequence    bigint      NOT NULL,
    routing_key text        NOT NULL,
    body        bytea       NOT NULL,
    parked_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (aggregate, id, sequence)
);
CREATE INDEX rv_parked_by_age ON rv_parked (parked_at);
