#!/bin/sh
# Sample outbox events for the compose playground, inserted the way an application writes
# them: in one transaction with its business change (here there is none, only the events).
#
# Every GENERATOR_INTERVAL seconds (default 1), one transaction inserts for a random order
# (1-50, so aggregates repeat and per-aggregate ordering matters):
#   order.placed    (aggregate order)     -> routed to kafka, topic outbox.order
#   invoice.issued  (aggregate invoice)   -> routed to webhook
# every 10th tick also customer.updated (aggregate customer) -> kafka and webhook, and every
# 60th tick a legacy.ping that no route matches: it ends `dead` with "no route", to show
# `dispatchbox dead list` and the dead-events panels.
#
# Connection from the standard PG* variables. A failed insert (e.g. PostgreSQL
# restarting) is logged and the loop goes on.
set -u

interval="${GENERATOR_INTERVAL:-1}"
tick=0
echo "generator: inserting sample events every ${interval}s into ${PGDATABASE:-?} on ${PGHOST:-?}"

while :; do
    tick=$((tick + 1))
    if ! psql --no-psqlrc -v ON_ERROR_STOP=1 -q -v tick="$tick" <<'SQL'
BEGIN;
WITH pick AS (SELECT (1 + floor(random() * 50))::int AS n)
INSERT INTO outbox_event (aggregate_type, aggregate_id, event_type, payload, headers)
SELECT 'order', pick.n::text, 'order.placed',
       jsonb_build_object('order_id', pick.n, 'total', round((random() * 200)::numeric, 2), 'tick', :tick),
       jsonb_build_object('source', 'compose-generator')
FROM pick
UNION ALL
SELECT 'invoice', 'inv-' || pick.n, 'invoice.issued',
       jsonb_build_object('invoice_id', 'inv-' || pick.n, 'order_id', pick.n, 'tick', :tick),
       jsonb_build_object('source', 'compose-generator')
FROM pick
UNION ALL
SELECT 'customer', 'c-' || (pick.n % 7), 'customer.updated',
       jsonb_build_object('customer_id', 'c-' || (pick.n % 7), 'tick', :tick),
       jsonb_build_object('source', 'compose-generator')
FROM pick WHERE :tick % 10 = 0
UNION ALL
SELECT 'legacy', 'ping', 'legacy.ping',
       jsonb_build_object('tick', :tick),
       jsonb_build_object('source', 'compose-generator')
FROM pick WHERE :tick % 60 = 0;
COMMIT;
SQL
    then
        echo "generator: tick $tick failed; retrying next tick" >&2
    elif [ $((tick % 30)) -eq 0 ]; then
        echo "generator: $tick ticks inserted"
    fi
    sleep "$interval"
done
