-- The benchmark's statements, loaded once by django_tasks_q.bench.queries, by name. Each
-- touches only rows of the benchmark's queue, or reads table statistics and settings.

-- name: foreign_rows
-- Tasks in the benchmark's queue that the benchmark did not make.
SELECT count(*) FROM django_tasks_q_task
WHERE queue = %s AND NOT (name = ANY(%s));

-- name: delete_bench_rows
DELETE FROM django_tasks_q_task WHERE queue = %s AND name = ANY(%s);

-- name: unfinished
-- Two counts rather than one IN, so each can use its partial index (READY, RUNNING).
SELECT (SELECT count(*) FROM django_tasks_q_task
        WHERE status = 'READY' AND queue = %(queue)s)
     + (SELECT count(*) FROM django_tasks_q_task
        WHERE status = 'RUNNING' AND queue = %(queue)s);

-- name: status
SELECT status FROM django_tasks_q_task WHERE id = %s;

-- name: started
-- The latency tasks that succeeded: their result (the clock when their function started) and
-- the milliseconds from the enqueueing commit to the claim.
SELECT id, result, extract(epoch FROM last_attempted_at - enqueued_at) * 1000
FROM django_tasks_q_task
WHERE id = ANY(%s) AND status = 'SUCCESSFUL' AND jsonb_typeof(result) = 'number';

-- name: verified
-- Rows that returned their argument, and the seconds from the first claim to the last finish.
SELECT count(*) FILTER (WHERE status = 'SUCCESSFUL' AND result = args->0),
       extract(epoch FROM max(finished_at) - min(last_attempted_at))
FROM django_tasks_q_task
WHERE queue = %s AND name = %s AND id > %s;

-- name: verified_waits
-- The I/O-bound phase's rows that returned [their argument, milliseconds waited], the mean of
-- those milliseconds, and the seconds from the first claim to the last finish.
SELECT count(*) FILTER (WHERE status = 'SUCCESSFUL' AND result->0 = args->0),
       avg((result->>1)::float8) FILTER (WHERE status = 'SUCCESSFUL' AND result->0 = args->0),
       extract(epoch FROM max(finished_at) - min(last_attempted_at))
FROM django_tasks_q_task
WHERE queue = %s AND name = %s;

-- name: last_id
SELECT coalesce(max(id), 0) FROM django_tasks_q_task;

-- name: most_running_per_key
-- Per concurrency key, the running count after each claim and finish, in time order (a
-- finish before a claim at the same instant); the highest of all keys.
SELECT max(running) FROM (
    SELECT sum(change) OVER (PARTITION BY key ORDER BY at, change, id) AS running
    FROM (
        SELECT id, key, last_attempted_at AS at, 1 AS change
        FROM django_tasks_q_task, jsonb_object_keys(concurrency_limits) AS key
        WHERE queue = %s AND name = %s
        UNION ALL
        SELECT id, key, finished_at, -1
        FROM django_tasks_q_task, jsonb_object_keys(concurrency_limits) AS key
        WHERE queue = %s AND name = %s
    ) AS event
) AS counted;

-- name: statuses
SELECT status, count(*) FROM django_tasks_q_task
WHERE queue = %s AND name = %s AND id > %s GROUP BY status ORDER BY status;

-- name: foreign_workers
-- Benchmark tasks run by a worker whose id lacks this run's prefix.
SELECT count(*), min(worker_id) FROM django_tasks_q_task
WHERE queue = %s AND name = %s
  AND worker_id <> '' AND NOT starts_with(worker_id, %s);

-- name: server_setting
SELECT current_setting(%s);

-- name: table_rows
-- The statistics' estimate of live and dead rows in the task table.
SELECT n_live_tup, n_dead_tup FROM pg_stat_user_tables
WHERE relid = 'django_tasks_q_task'::regclass;

-- name: database_cost
-- What the database has done so far: WAL written (bytes since LSN 0), commits, and rows
-- inserted, updated and deleted, in this database. The counters are the server's statistics,
-- which each backend adds to when it is idle (at most a second late).
SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint, xact_commit,
       tup_inserted + tup_updated + tup_deleted
FROM pg_stat_database WHERE datname = current_database();

-- name: database_now
SELECT clock_timestamp();

-- name: window
-- The steady load between two database times: tasks enqueued, tasks run (finished) and the
-- claim lag percentiles of those (enqueued to claimed, ms). Both counts read index ranges
-- (tasks_q_enqueued_idx, tasks_q_finished_idx): a window costs what it holds, not what the
-- table holds, so measuring does not itself press on the database it measures (a count of the
-- READY rows would walk every dead entry a held xmin horizon keeps; the caller works out the
-- backlog from the two counts instead).
SELECT
    (SELECT count(*) FROM django_tasks_q_task
     WHERE queue = %(queue)s AND name = %(name)s
       AND enqueued_at >= %(since)s AND enqueued_at < %(until)s),
    count(*),
    percentile_cont(0.5) WITHIN GROUP (ORDER BY lag_ms),
    percentile_cont(0.99) WITHIN GROUP (ORDER BY lag_ms)
FROM (
    SELECT extract(epoch FROM last_attempted_at - enqueued_at) * 1000 AS lag_ms
    FROM django_tasks_q_task
    WHERE status = 'SUCCESSFUL' AND finished_at >= %(since)s AND finished_at < %(until)s
      AND queue = %(queue)s AND name = %(name)s
) AS run;

-- name: last_finish
SELECT max(finished_at) FROM django_tasks_q_task WHERE queue = %s AND name = %s;

-- name: first_claim_after
-- When the workers claimed again after being cut off from the database.
SELECT min(last_attempted_at) FROM django_tasks_q_task
WHERE queue = %s AND name = %s AND last_attempted_at >= %s;

-- name: repeatable_read
-- The first statement of a reader's transaction: one snapshot for the whole scan.
SET TRANSACTION ISOLATION LEVEL REPEATABLE READ;

-- name: reader_one_process
-- A reader scans in its own process only: parallel workers would measure how many cores the
-- machine has left for the queue, not what a held snapshot does to it.
SET LOCAL max_parallel_workers_per_gather = 0;

-- name: reader_scan
-- What a report or an analytics job reads: every row of the table, in one snapshot.
SELECT count(*), max(enqueued_at) FROM django_tasks_q_task;

-- name: terminate_workers
-- Ends the connections of this run's workers, found by the worker id in their
-- application_name ('django_tasks_q <role> <worker id>'; the id starts with a random prefix of
-- this run), in this database and of this user only. pg_terminate_backend sits in the select
-- list: it runs only for the rows the WHERE clause kept (in the WHERE clause, the planner could
-- evaluate it first, on other sessions' rows).
SELECT pid, pg_terminate_backend(pid) FROM pg_stat_activity
WHERE datname = current_database() AND usename = current_user AND pid <> pg_backend_pid()
  AND backend_type = 'client backend'
  AND split_part(application_name, ' ', 1) = 'django_tasks_q'
  AND starts_with(split_part(application_name, ' ', 3), %s);
