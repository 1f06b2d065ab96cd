ALTER TABLE rv_customers DROP COLUMN applied;
ALTER TABLE rv_orders DROP COLUMN applied;
ALTER TABLE rv_products DROP COLUMN applied;
DROP SEQUENCE rv_applied_seq;
