//! Numbered schema migrations for SQLite, applied in order at open; `PRAGMA user_version`
//! records how many have run. Never edit a landed migration: add the next one.

pub const SQLITE: &[&str] = &[
    // 1: jobs, attempts, dependencies, nodes, GPUs.
    r#"
    CREATE TABLE jobs (
        id               INTEGER PRIMARY KEY AUTOINCREMENT,
        spec             TEXT    NOT NULL,
        state            TEXT    NOT NULL,
        priority         INTEGER NOT NULL,
        submitted_at     INTEGER NOT NULL,
        started_at       INTEGER,
        finished_at      INTEGER,
        attempt          INTEGER NOT NULL DEFAULT 0,
        gpus_assigned    TEXT    NOT NULL DEFAULT '[]',
        node             TEXT,
        exit_code        INTEGER,
        signal           INTEGER,
        reason           TEXT,
        cancel_requested INTEGER NOT NULL DEFAULT 0
    );
    -- Active jobs are few next to history: a partial index keeps finding them cheap.
    CREATE INDEX jobs_active ON jobs(id)
        WHERE state IN ('blocked','queued','allocated','starting','running');
    CREATE INDEX jobs_finished ON jobs(finished_at)
        WHERE state IN ('succeeded','failed','canceled','lost');
    CREATE TABLE attempts (
        job_id           INTEGER NOT NULL REFERENCES jobs(id),
        n                INTEGER NOT NULL,
        node             TEXT    NOT NULL,
        gpus             TEXT    NOT NULL,
        cpus             INTEGER NOT NULL,
        state            TEXT    NOT NULL,
        run_dir          TEXT    NOT NULL,
        supervisor_pid   INTEGER,
        supervisor_start INTEGER,
        created_at       INTEGER NOT NULL,
        started_at       INTEGER,
        finished_at      INTEGER,
        exit_code        INTEGER,
        signal           INTEGER,
        reason           TEXT,
        PRIMARY KEY (job_id, n)
    );
    CREATE TABLE job_deps (
        job_id     INTEGER NOT NULL REFERENCES jobs(id),
        depends_on INTEGER NOT NULL REFERENCES jobs(id),
        PRIMARY KEY (job_id, depends_on)
    );
    CREATE TABLE nodes (
        name       TEXT PRIMARY KEY,
        cpus       INTEGER NOT NULL,
        first_seen INTEGER NOT NULL,
        last_seen  INTEGER NOT NULL
    );
    CREATE TABLE gpus (
        node             TEXT    NOT NULL REFERENCES nodes(name),
        idx              INTEGER NOT NULL,
        name             TEXT    NOT NULL,
        uuid             TEXT,
        memory_total_mib INTEGER NOT NULL,
        PRIMARY KEY (node, idx)
    );
    "#,
    // 2: holds, begin times and retry backoff, arrays, retries, the user as a column (fair share).
    r#"
    ALTER TABLE jobs ADD COLUMN held INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN not_before INTEGER;
    ALTER TABLE jobs ADD COLUMN array_id INTEGER;
    ALTER TABLE jobs ADD COLUMN retries_used INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN user TEXT;
    CREATE INDEX job_deps_depends_on ON job_deps(depends_on);
    CREATE INDEX attempts_finished ON attempts(finished_at) WHERE finished_at IS NOT NULL;
    "#,
    // 3: things seen about a job while it ran (GPU checks), kept with it.
    r#"
    CREATE TABLE job_events (
        id      INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id  INTEGER NOT NULL REFERENCES jobs(id),
        attempt INTEGER NOT NULL,
        at      INTEGER NOT NULL,
        kind    TEXT    NOT NULL,
        message TEXT    NOT NULL
    );
    CREATE INDEX job_events_job ON job_events(job_id);
    "#,
    // 4: what the job list's search looks in (name and command line), kept apart from the spec,
    // whose environment would make every search scan kilobytes per job; and a covering index in
    // id order that the job list walks to filter, page and count (instead of the whole table).
    r#"
    ALTER TABLE jobs ADD COLUMN label TEXT NOT NULL DEFAULT '';
    UPDATE jobs SET label = trim(coalesce(json_extract(spec, '$.name'), '') || ' ' ||
        (SELECT coalesce(group_concat(value, ' '), '') FROM json_each(spec, '$.command')));
    CREATE INDEX jobs_browse ON jobs(id, state, label, user);
    "#,
    // 5: jobs by state, for the listing of what holds resources: without it the planner walked
    // jobs_browse, every job ever, to find the few running ones.
    r#"
    CREATE INDEX jobs_state ON jobs(state, id);
    "#,
    // 6: cluster mode: bearer tokens (only their SHA-256 is kept), and what a controller keeps
    // of each node: its lease epoch, whether it is drained or cordoned, tags, limits, version; a
    // gang attempt's other ranks.
    r#"
    CREATE TABLE tokens (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        name       TEXT    NOT NULL,
        role       TEXT    NOT NULL,
        hash       TEXT    NOT NULL UNIQUE,
        created_at INTEGER NOT NULL,
        expires_at INTEGER,
        revoked_at INTEGER
    );
    ALTER TABLE nodes ADD COLUMN epoch INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE nodes ADD COLUMN admin TEXT NOT NULL DEFAULT 'ready';
    ALTER TABLE nodes ADD COLUMN tags TEXT NOT NULL DEFAULT '[]';
    ALTER TABLE nodes ADD COLUMN max_jobs INTEGER;
    ALTER TABLE nodes ADD COLUMN version TEXT NOT NULL DEFAULT '';
    ALTER TABLE nodes ADD COLUMN remote INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE attempts ADD COLUMN ranks TEXT NOT NULL DEFAULT '[]';
    "#,
];
