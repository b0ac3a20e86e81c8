-- runq's SQLite schema. One row per task; `seq` (the rowid) is the FIFO tie-break.
-- Partial indexes keep each hot query (claim, promote, reclaim) an index range scan.

CREATE TABLE IF NOT EXISTS runq_tasks (
    seq            INTEGER PRIMARY KEY,
    id             TEXT    NOT NULL UNIQUE,
    queue          TEXT    NOT NULL,
    name           TEXT    NOT NULL,
    status         TEXT    NOT NULL,
    priority       INTEGER NOT NULL,
    ready_at       REAL    NOT NULL,  -- when it became (or becomes) ready to run
    payload        TEXT    NOT NULL,  -- the JSON Message, kept verbatim
    attempts       INTEGER NOT NULL DEFAULT 0,
    key            TEXT,              -- idempotency key, unique per queue while held
    key_expires_at REAL,
    token          TEXT,              -- fencing token of the current claim
    lease_until    REAL,
    worker         TEXT,
    result         TEXT,              -- JSON
    error          TEXT,              -- JSON {type, message, traceback}
    result_ttl     REAL    NOT NULL,
    enqueued_at    REAL    NOT NULL,
    started_at     REAL,
    finished_at    REAL,
    expires_at     REAL,              -- deleted after this; NULL keeps it (failed tasks)
    deadline       REAL,              -- flow control (flow.py): not started by then, cancelled
    slot           TEXT,              -- what its concurrency limit counts
    concurrency    INTEGER            -- runs of slot at once
);

CREATE INDEX IF NOT EXISTS runq_ready ON runq_tasks (queue, priority DESC, ready_at, seq)
    WHERE status = 'pending';
CREATE INDEX IF NOT EXISTS runq_due ON runq_tasks (queue, ready_at)
    WHERE status = 'scheduled';
CREATE INDEX IF NOT EXISTS runq_leases ON runq_tasks (queue, lease_until)
    WHERE status = 'running';
CREATE INDEX IF NOT EXISTS runq_by_status ON runq_tasks (status, queue, seq);
CREATE INDEX IF NOT EXISTS runq_expiry ON runq_tasks (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS runq_finished ON runq_tasks (finished_at)
    WHERE finished_at IS NOT NULL;
CREATE UNIQUE INDEX IF NOT EXISTS runq_keys ON runq_tasks (queue, key)
    WHERE key IS NOT NULL;

CREATE TABLE IF NOT EXISTS runq_counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE IF NOT EXISTS runq_workers (
    id         TEXT PRIMARY KEY,
    info       TEXT NOT NULL,
    expires_at REAL NOT NULL
) WITHOUT ROWID;

-- Workflows (issue 6): one row per unresolved parent of a waiting task. A parent that
-- ends deletes its rows: the child is released when it has none left, or cancelled
-- (never, for a child waiting in the after_final mode: final = 1; brokers/rules.py).
CREATE TABLE IF NOT EXISTS runq_deps (
    parent TEXT NOT NULL,
    child  TEXT NOT NULL,
    final  INTEGER NOT NULL DEFAULT 0,  -- added by flow.migrate to a database made before it
    PRIMARY KEY (parent, child)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS runq_deps_child ON runq_deps (child);

-- Periodic tasks: a tick taken by one beat process; expired rows are deleted.
CREATE TABLE IF NOT EXISTS runq_ticks (
    name       TEXT NOT NULL,
    tick       TEXT NOT NULL,
    expires_at REAL NOT NULL,
    PRIMARY KEY (name, tick)
) WITHOUT ROWID;

-- Rate limits per task name: GCRA (tat: when the next run may start; tail: the slot
-- handed to the last caller told to wait).
CREATE TABLE IF NOT EXISTS runq_rates (
    name TEXT PRIMARY KEY,
    tat  REAL NOT NULL,
    tail REAL NOT NULL
) WITHOUT ROWID;

-- Circuit breakers per task name.
CREATE TABLE IF NOT EXISTS runq_breakers (
    name        TEXT PRIMARY KEY,
    state       TEXT NOT NULL,      -- closed | open | half_open
    failures    INTEGER NOT NULL,   -- failed attempts in a row
    open_until  REAL NOT NULL,
    probe_until REAL NOT NULL,
    seen        TEXT NOT NULL DEFAULT ''  -- the claims of its last reports (rules.first_report)
) WITHOUT ROWID;

-- Per-task metrics (issue 14): fleet-wide totals that workers add their deltas to with
-- their heartbeat; field is "<series>:<task>" (runq/observe/task_metrics.py).
CREATE TABLE IF NOT EXISTS runq_task_metrics (
    queue TEXT NOT NULL,
    field TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (queue, field)
) WITHOUT ROWID;

-- Paused queues (SPEC §9): claims skip them.
CREATE TABLE IF NOT EXISTS runq_paused (
    queue TEXT PRIMARY KEY
) WITHOUT ROWID;
