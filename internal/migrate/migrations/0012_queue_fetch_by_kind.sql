-- Pattern 1: a second fetch index, for fetches that walk each kind
-- (source, event type) they take on their own, in run_at order, one
-- handler name at a time. A fetch that walks queue_fetch_idx reads past
-- every due event of a kind it does not take, so a backlog of such kinds
-- (a handler's whose circuit breaker is open, types no handler takes, a
-- paused source's or handler's) slowed each fetch: 40 ms behind 100,000
-- events. A Consumer walks each kind instead while such a backlog lies
-- ahead (queue.FetchParams.ByKind). The handler name (empty for none)
-- sits between the kind and the order, so that a paused handler's events
-- are left out whole, not read past one by one.
-- COLLATE "C" compares the names bytewise: the cheapest comparison for
-- every insert, and one that no locale upgrade changes.
-- CREATE INDEX blocks writes to the queue while it runs; a queue holds
-- events for seconds, so it is small unless a backlog built up.
CREATE INDEX queue_fetch_kind_idx ON {schema}.queue
    (source COLLATE "C", event_type COLLATE "C", (coalesce(handler, '')) COLLATE "C", run_at, id)
    WHERE state = 'available';
