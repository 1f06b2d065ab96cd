-- Every view row records when it was last written: `applied`, a number the writing statement
-- draws from rv_applied_seq. A rebuild draws one when it starts; at the swap it carries over
-- only the live rows written after that (what the live projector applied meanwhile), so a row
-- the stream never produced does not outlive a rebuild.
-- The sequence belongs to no table on purpose: a rebuild renames and drops the tables, and an
-- owned sequence would be dropped with them.
CREATE SEQUENCE rv_applied_seq;

-- Existing rows are older than any rebuild to come: 0. Adding the column with a constant
-- default and setting the real one after avoids rewriting the tables.
ALTER TABLE rv_products ADD COLUMN applied bigint NOT NULL DEFAULT 0;
ALTER TABLE rv_products ALTER COLUMN applied SET DEFAULT nextval('rv_applied_seq');
ALTER TABLE rv_orders ADD COLUMN applied bigint NOT NULL DEFAULT 0;
ALTER TABLE rv_orders ALTER COLUMN applied SET DEFAULT nextval('rv_applied_seq');
ALTER TABLE rv_customers ADD COLUMN applied bigint NOT NULL DEFAULT 0;
ALTER TABLE rv_customers ALTER COLUMN applied SET DEFAULT nextval('rv_applied_seq');
