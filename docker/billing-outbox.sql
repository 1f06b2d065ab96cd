-- The sidecar example's database (compose.yaml, profile "sidecar"; docs/sidecar.md explains it):
-- a service of its own with the outbox table the relay's contract names. The service writes its
-- events here in its own transactions; its outbox-relay adds the columns and side tables it needs.
CREATE TABLE outbox (
  id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  event_id       uuid        NOT NULL UNIQUE,
  aggregate_type text        NOT NULL,
  aggregate_id   text        NOT NULL,
  sequence       bigint      NOT NULL,
  event_type     text        NOT NULL,
  payload        jsonb       NOT NULL,
  headers        jsonb       NOT NULL DEFAULT '{}',
  created_at     timestamptz NOT NULL DEFAULT now()
);
