-- Pattern 1: an event whose lease expired unfinished (its worker died or
-- hung) is marked rescued until it next runs to an outcome. A fetch takes
-- a rescued event alone, in a lease of its own, so an event that kills
-- its worker every time spends only its own attempts: the events fetched
-- with it spend one attempt on the first crash, then run apart from it.
-- Not indexed, so the updates that set and clear it stay in place (HOT).
ALTER TABLE {schema}.queue ADD COLUMN rescued boolean NOT NULL DEFAULT false;
