DROP TABLE rv_parked;
