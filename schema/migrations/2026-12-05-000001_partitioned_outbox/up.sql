-- The outbox, partitioned by day on created_at, so that history costs nothing to keep or to
-- drop: each sent row used to be deleted one by one past the retention (dead tuples, vacuum,
-- index churn on a table of millions); now the relay drops a whole day's partition once every
-- row in it is sent and the day is past OUTBOX_RETENTION, and it creates the coming days'
-- partitions ahead (docs/sidecar.md, "A partitioned outbox"). Today's rows sit in a small
-- partition whatever the history, so marking rows sent touches small indexes.
--
-- PostgreSQL enforces uniqueness on a partitioned table only with the partition key in the
-- constraint, so the key is (id, created_at) and event_id is unique per created_at. Both stay
-- unique in fact: id comes from the identity, event_id is a fresh UUIDv7 per event.
--
-- `outbox_default` takes rows whose day has no partition yet (the relay is not running, or a
-- row carries a created_at from outside the days made ahead); the relay moves them into their
-- day's partition when it creates it, and deletes those past retention row by row.
--
-- The rows of an existing outbox are kept, with the relay's sending state when its schema
-- step had been applied (columns, partial index and NOTIFY trigger named after the table, as
-- outbox-relay's schema module names them).

ALTER TABLE outbox RENAME TO outbox_unpartitioned;
ALTER TABLE outbox_unpartitioned RENAME CONSTRAINT outbox_pkey TO outbox_unpartitioned_pkey;
ALTER TABLE outbox_unpartitioned RENAME CONSTRAINT outbox_event_id_key TO outbox_unpartitioned_event_id_key;

CREATE TABLE outbox (
  id                bigint GENERATED ALWAYS AS IDENTITY,
  event_id          uuid        NOT NULL,
  aggregate_type    text        NOT NULL,
  aggregate_id      text        NOT NULL,
  sequence          bigint      NOT NULL,
  event_type        text        NOT NULL,
  payload           jsonb       NOT NULL,
  headers           jsonb       NOT NULL DEFAULT '{}',
  created_at        timestamptz NOT NULL DEFAULT now(),
  CONSTRAINT outbox_pkey PRIMARY KEY (id, created_at),
  CONSTRAINT outbox_event_id_key UNIQUE (event_id, created_at)
) PARTITION BY RANGE (created_at);
CREATE TABLE outbox_default PARTITION OF outbox DEFAULT;

DO $$
DECLARE
  relay boolean := EXISTS (
    SELECT 1 FROM pg_attribute
    WHERE attrelid = 'outbox_unpartitioned'::regclass AND attname = 'sent_at' AND NOT attisdropped);
  cols text := 'id, event_id, aggregate_type, aggregate_id, sequence, event_type, payload, headers, created_at';
  day timestamptz;
BEGIN
  IF relay THEN
    ALTER INDEX outbox_relay_unsent RENAME TO outbox_unpartitioned_relay_unsent;
    ALTER TABLE outbox
      ADD COLUMN sent_at timestamptz,
      ADD COLUMN attempts integer NOT NULL DEFAULT 0,
      ADD COLUMN last_error text;
    cols := cols || ', sent_at, attempts, last_error';
  END IF;
  -- A partition for each day the kept rows span (UTC days, named as the relay names them).
  FOR day IN
    SELECT DISTINCT date_trunc('day', created_at, 'UTC') FROM outbox_unpartitioned ORDER BY 1
  LOOP
    EXECUTE format(
      'CREATE TABLE %I PARTITION OF outbox FOR VALUES FROM (%L) TO (%L)',
      'outbox_p' || to_char(day AT TIME ZONE 'UTC', 'YYYYMMDD'), day, day + interval '1 day');
  END LOOP;
  EXECUTE format(
    'INSERT INTO outbox (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM outbox_unpartitioned', cols, cols);
  PERFORM setval(pg_get_serial_sequence('outbox', 'id'), coalesce(max(id), 0) + 1, false)
    FROM outbox_unpartitioned;
  DROP TABLE outbox_unpartitioned;
  IF relay THEN
    CREATE INDEX outbox_relay_unsent ON outbox (id) WHERE sent_at IS NULL;
    CREATE TRIGGER outbox_relay_notify AFTER INSERT ON outbox
      FOR EACH STATEMENT EXECUTE FUNCTION outbox_relay_notify();
  END IF;
END $$;
