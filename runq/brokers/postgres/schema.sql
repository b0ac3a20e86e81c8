-- runq's PostgreSQL schema, as numbered migrations. `{schema}` is the configured schema
-- (default runq), quoted. The broker applies, under an advisory lock, every migration
-- above the number in {schema}.version, each in the transaction that bumps the number,
-- so many processes starting at once migrate exactly once.
--
-- Times are float8 seconds since the epoch on the server's clock. Partial indexes keep
-- each hot query an index range scan over only the rows it can return, so they stay
-- small however many finished tasks the table holds; see docs/architecture.md for how
-- bloat is handled (aggressive autovacuum on the churning tables, batched pruning).

-- migration: 1
CREATE TABLE {schema}.tasks (
    seq            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,  -- the FIFO tie-break
    id             text    NOT NULL UNIQUE,
    queue          text    NOT NULL,
    name           text    NOT NULL,
    status         text    NOT NULL,
    priority       integer NOT NULL,
    ready_at       float8  NOT NULL,  -- when it became (or becomes) ready to run
    payload        text    NOT NULL,  -- the JSON Message, kept verbatim
    attempts       integer NOT NULL DEFAULT 0,
    key            text,              -- idempotency key, unique per queue while held
    key_expires_at float8,
    token          text,              -- fencing token of the current claim
    lease_until    float8,
    worker         text,
    result         text,              -- JSON
    error          text,              -- JSON {type, message, traceback}
    result_ttl     float8  NOT NULL,
    enqueued_at    float8  NOT NULL,
    started_at     float8,
    finished_at    float8,
    expires_at     float8             -- deleted after this; NULL keeps it (failed tasks)
) WITH (
    fillfactor = 90,
    autovacuum_vacuum_scale_factor = 0.02,
    autovacuum_vacuum_threshold = 1000,
    autovacuum_vacuum_insert_scale_factor = 0.05,
    autovacuum_analyze_scale_factor = 0.05,
    autovacuum_vacuum_cost_delay = 0
);

CREATE INDEX tasks_ready ON {schema}.tasks (queue, priority DESC, ready_at, seq) WHERE status = 'pending';
CREATE INDEX tasks_due ON {schema}.tasks (queue, ready_at) WHERE status = 'scheduled';
CREATE INDEX tasks_leases ON {schema}.tasks (queue, lease_until) WHERE status = 'running';
CREATE INDEX tasks_final ON {schema}.tasks (status, queue, seq)
    WHERE status IN ('succeeded', 'failed', 'cancelled', 'waiting');
CREATE INDEX tasks_expiry ON {schema}.tasks (expires_at) WHERE expires_at IS NOT NULL;
CREATE INDEX tasks_finished ON {schema}.tasks (finished_at) WHERE status = 'succeeded';
CREATE UNIQUE INDEX tasks_keys ON {schema}.tasks (queue, key) WHERE key IS NOT NULL;

-- Counters are insert-only deltas (no hot row for every settle and enqueue to queue on,
-- even inside a producer's long transaction); housekeeping folds them into `counters`.
CREATE TABLE {schema}.counters (
    name  text PRIMARY KEY,
    value bigint NOT NULL
);
CREATE TABLE {schema}.counter_deltas (
    name  text   NOT NULL,
    value bigint NOT NULL
) WITH (autovacuum_vacuum_scale_factor = 0.02, autovacuum_vacuum_cost_delay = 0);

CREATE TABLE {schema}.workers (
    id         text PRIMARY KEY,
    info       text   NOT NULL,
    expires_at float8 NOT NULL
);

-- Workflows: one row per unresolved parent of a waiting task.
CREATE TABLE {schema}.deps (
    parent text NOT NULL,
    child  text NOT NULL,
    PRIMARY KEY (parent, child)
);
CREATE INDEX deps_child ON {schema}.deps (child);

CREATE TABLE {schema}.ticks (
    name       text   NOT NULL,
    tick       text   NOT NULL,
    expires_at float8 NOT NULL,
    PRIMARY KEY (name, tick)
);

CREATE TABLE {schema}.rates (
    name text PRIMARY KEY,
    tat  float8 NOT NULL,
    tail float8 NOT NULL
);

CREATE TABLE {schema}.breakers (
    name        text PRIMARY KEY,
    state       text    NOT NULL,
    failures    integer NOT NULL,
    open_until  float8  NOT NULL,
    probe_until float8  NOT NULL
);

-- migration: 2
-- Per-task metrics (issue 14): fleet-wide totals that workers add their deltas to with
-- their heartbeat; field is "<series>:<task>" (runq/observe/task_metrics.py).
CREATE TABLE {schema}.task_metrics (
    queue text   NOT NULL,
    field text   NOT NULL,
    value float8 NOT NULL,
    PRIMARY KEY (queue, field)
);

-- migration: 3
-- Progress and followers (runq/brokers/postgres/follow.py): a task's latest progress (JSON),
-- and `watched`, NULL until someone follows the task, then the number of its changes since.
-- The trigger's WHEN is false for a task nobody follows: claim and settle write nothing more.
ALTER TABLE {schema}.tasks ADD COLUMN progress text, ADD COLUMN watched bigint;

-- A payload NOTIFY cannot carry (over 8000 bytes) goes without the progress: followers read it.
CREATE FUNCTION {schema}.task_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    payload text;
BEGIN
    NEW.watched := OLD.watched + 1;
    payload := json_build_object('id', NEW.id, 'v', NEW.watched, 'status', NEW.status,
        'progress', NEW.progress, 'at', extract(epoch FROM clock_timestamp()))::text;
    IF octet_length(payload) > 7900 THEN
        payload := json_build_object('id', NEW.id, 'v', NEW.watched, 'status', NEW.status, 'reread', true)::text;
    END IF;
    PERFORM pg_notify(TG_TABLE_SCHEMA || '_events', payload);
    RETURN NEW;
END
$$;

CREATE TRIGGER task_changed BEFORE UPDATE OF status, progress ON {schema}.tasks
    FOR EACH ROW WHEN (OLD.watched IS NOT NULL
        AND (OLD.status IS DISTINCT FROM NEW.status OR OLD.progress IS DISTINCT FROM NEW.progress))
    EXECUTE FUNCTION {schema}.task_changed();

-- migration: 4
-- Flow control (SPEC §9): a task's deadline (not started by then: cancelled), the slot its
-- concurrency limit counts and that limit; held tasks are scheduled with ready_at infinite.
ALTER TABLE {schema}.tasks ADD COLUMN deadline float8, ADD COLUMN slot text, ADD COLUMN concurrency integer;
CREATE INDEX tasks_deadlines ON {schema}.tasks (queue, deadline)
    WHERE deadline IS NOT NULL AND status IN ('pending', 'scheduled');
CREATE INDEX tasks_seats ON {schema}.tasks (queue, slot, status)
    WHERE slot IS NOT NULL AND status IN ('pending', 'running');
CREATE INDEX tasks_held ON {schema}.tasks (queue, slot, priority DESC, seq)
    WHERE slot IS NOT NULL AND status = 'scheduled';
CREATE TABLE {schema}.paused (
    queue text PRIMARY KEY
);

-- migration: 5
-- The second dependency mode (brokers/rules.py): a child waiting in the after_final mode is
-- released once every parent is final, whatever the outcome, and never cancelled by one.
ALTER TABLE {schema}.deps ADD COLUMN final boolean NOT NULL DEFAULT false;

-- migration: 6
-- The claims of a breaker's last reports (rules.first_report): a settle sent again counts once.
ALTER TABLE {schema}.breakers ADD COLUMN seen text NOT NULL DEFAULT '';
