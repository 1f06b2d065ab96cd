-- Back to one plain outbox table, rows and the relay's sending state kept.

ALTER TABLE outbox RENAME TO outbox_partitioned;
ALTER TABLE outbox_partitioned RENAME CONSTRAINT outbox_pkey TO outbox_partitioned_pkey;
ALTER TABLE outbox_partitioned RENAME CONSTRAINT outbox_event_id_key TO outbox_partitioned_event_id_key;

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

DO $$
DECLARE
  relay boolean := EXISTS (
    SELECT 1 FROM pg_attribute
    WHERE attrelid = 'outbox_partitioned'::regclass AND attname = 'sent_at' AND NOT attisdropped);
  cols text := 'id, event_id, aggregate_type, aggregate_id, sequence, event_type, payload, headers, created_at';
BEGIN
  IF relay THEN
    ALTER INDEX outbox_relay_unsent RENAME TO outbox_partitioned_relay_unsent;
    ALTER TABLE outbox
      ADD COLUMN sent_at timestamptz,
      ADD COLUMN attempts integer NOT NULL DEFAULT 0,
      ADD COLUMN last_error text;
    cols := cols || ', sent_at, attempts, last_error';
  END IF;
  EXECUTE format(
    'INSERT INTO outbox (%s) OVERRIDING SYSTEM VALUE SELECT %s FROM outbox_partitioned ORDER BY id', cols, cols);
  PERFORM setval(pg_get_serial_sequence('outbox', 'id'), coalesce(max(id), 0) + 1, false)
    FROM outbox_partitioned;
  DROP TABLE outbox_partitioned;
  IF relay THEN
    CREATE INDEX outbox_relay_unsent ON outbox (id) WHERE sent_at IS NULL;
    CREATE TRIGGER outbox_relay_notify AFTER INSERT ON outbox
      FOR EACH STATEMENT EXECUTE FUNCTION outbox_relay_notify();
  END IF;
END $$;
