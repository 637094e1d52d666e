-- Every statement the queue runs. Loaded once by django_tasks_q.queue, by name.
-- Time comparisons use the database clock (now()): workers on many hosts must agree.
-- Filled in when the file is loaded: {task_columns} (the columns a worker reads of a claimed
-- task, named in ClaimedTask), and {cancelled_entry} / {expired_entry}, the error entries a
-- statement writes itself, defined in django_tasks_q.errors ({expired_message}: the latter's
-- message, which the statement goes on with).

-- name: enqueue
-- One row; the NOTIFY is part of the same transaction, so it is delivered only if the
-- caller commits, and only after the row is visible to the woken worker. Beat passes the
-- schedule and tick; tasks_q_schedule_tick_uniq refuses a tick enqueued twice.
-- A task of a paused queue or name is inserted WAITING, held by that pause ({held_by_pause});
-- a task of a fair queue whose key has its turn full, held by the turn ({held_by_turn}).
-- With a unique key, nothing is inserted (no row returned) while a task with that key is
-- WAITING (held by a pause), READY or RUNNING: tasks_q_unique_key_active is the arbiter. An uncommitted insert of the
-- same key by another transaction makes this one wait for it to commit or roll back.
-- A chosen id already taken fails on tasks_q_chosen_id_uniq (the backend's savepoint catches
-- it): one ON CONFLICT cannot name two arbiters, and the unique key needs this one.
WITH held AS MATERIALIZED (
    SELECT COALESCE({held_by_pause}, {held_by_turn}) AS held_by
    FROM (VALUES (%(queue)s::text, %(name)s::text, %(fair_key)s::text, %(fair_turn)s::integer,
                  0::bigint)) AS task(queue, name, fair_key, fair_turn, ahead)
),
inserted AS (
    INSERT INTO django_tasks_q_task
        (name, queue, priority, status, args, kwargs, run_after, enqueued_at,
         attempts, max_attempts, max_lost_attempts, timeout, worker_id, errors,
         expires_at, schedule_id, scheduled_for, unique_key, chosen_id, held_by,
         concurrency_limits, rate_limits, fair_key, fair_turn, trace_context)
    SELECT %(name)s, %(queue)s, %(priority)s,
           CASE WHEN held.held_by IS NULL THEN 'READY' ELSE 'WAITING' END,
           %(args)s::jsonb, %(kwargs)s::jsonb,
           COALESCE(%(run_after)s::timestamptz, now()), now(),
           0, %(max_attempts)s, %(max_lost_attempts)s, %(timeout)s, '', '[]'::jsonb,
           %(expires_at)s::timestamptz, %(schedule_id)s::bigint, %(scheduled_for)s::timestamptz,
           %(unique_key)s, %(chosen_id)s, held.held_by, %(concurrency_limits)s::jsonb,
           %(rate_limits)s::jsonb, %(fair_key)s::text, %(fair_turn)s::smallint,
           %(trace_context)s::jsonb
    FROM held
    ON CONFLICT (unique_key)
        WHERE unique_key IS NOT NULL AND status IN ('WAITING', 'READY', 'RUNNING')
    DO NOTHING
    RETURNING id, status, queue, priority, run_after, enqueued_at
),
notified AS (
    SELECT pg_notify('django_tasks_q', {ready_notice})
    FROM inserted WHERE %(notify)s AND status = 'READY' AND run_after <= now()
)
SELECT id, run_after, enqueued_at, (SELECT count(*) FROM notified), status
FROM inserted;

-- name: active_with_unique_key
-- The unfinished task holding a unique key, if any.
SELECT id FROM django_tasks_q_task
WHERE unique_key = %(unique_key)s AND status IN ('WAITING', 'READY', 'RUNNING');

-- name: enqueue_many
-- Ids come from the sequence in the order the SELECT produces rows (call order), so the sorted
-- ids map back to the calls. run_after and enqueued_at are the same for every row.
-- Each call's place among the calls of its fair key (ahead) counts towards the key's turn.
-- {ahead} and {turn_of_call} are filled in when the file is loaded: for enqueue_many_fair, a
-- window over the calls and {held_by_turn}; for enqueue_many (no fair key among the calls),
-- 0 and NULL, so that plain calls are neither sorted nor looked at one by one.
WITH held AS MATERIALIZED (
    SELECT {held_by_pause} AS held_by
    FROM (VALUES (%(queue)s::text, %(name)s::text)) AS task(queue, name)
),
call AS (
    SELECT call.*, %(fair_turn)s::integer AS fair_turn, {ahead} AS ahead
    FROM unnest(%(args)s::jsonb[], %(kwargs)s::jsonb[], %(concurrency_limits)s::jsonb[],
                %(rate_limits)s::jsonb[], %(fair_key)s::text[])
        WITH ORDINALITY AS call(args, kwargs, concurrency_limits, rate_limits, fair_key, n)
),
inserted AS (
    INSERT INTO django_tasks_q_task
        (name, queue, priority, status, args, kwargs, run_after, enqueued_at,
         attempts, max_attempts, max_lost_attempts, timeout, worker_id, errors, held_by,
         concurrency_limits, rate_limits, fair_key, fair_turn, trace_context)
    SELECT %(name)s, %(queue)s, %(priority)s,
           CASE WHEN turn.held_by IS NULL THEN 'READY' ELSE 'WAITING' END,
           task.args, task.kwargs,
           COALESCE(%(run_after)s::timestamptz, now()), now(),
           0, %(max_attempts)s, %(max_lost_attempts)s, %(timeout)s, '', '[]'::jsonb,
           turn.held_by, task.concurrency_limits, task.rate_limits, task.fair_key,
           task.fair_turn, %(trace_context)s::jsonb
    FROM held, call AS task
    CROSS JOIN LATERAL (SELECT COALESCE(held.held_by, {turn_of_call}) AS held_by) AS turn
    ORDER BY task.n
    RETURNING id, status, queue, priority, run_after, enqueued_at
),
notified AS (
    SELECT pg_notify('django_tasks_q', {ready_notice})
    FROM (
        SELECT DISTINCT queue, priority, run_after
        FROM inserted WHERE %(notify)s AND status = 'READY' AND run_after <= now()
    ) AS ready
)
SELECT array_agg(id ORDER BY id), min(run_after), min(enqueued_at), (SELECT count(*) FROM notified),
       array_agg(status ORDER BY id)
FROM inserted;

-- name: enqueue_workflow
-- The tasks of a workflow and the edges between them, in one statement (docs/workflows.md).
-- Tasks arrive as parallel arrays in workflow order; ids come from the sequence in that order
-- (see enqueue_many), so %(edge_tasks)s and %(edge_parents)s name tasks by their 1-based place
-- in the arrays, or, when negative, an existing task by its id negated. A task with
-- dependencies is WAITING with waiting_for counting them all: the deferred trigger on the
-- edges settles at commit those whose dependency had already finished (migration 0007).
-- Tasks with dependents are inserted with has_dependents set, as that trigger would set it.
-- Beat passes the schedule and tick of a task with callbacks on its first row.
WITH node AS (
    SELECT *
    FROM unnest(
        %(names)s::text[], %(queues)s::text[], %(priorities)s::smallint[], %(args)s::jsonb[],
        %(kwargs)s::jsonb[], %(run_afters)s::timestamptz[], %(max_attempts)s::integer[],
        %(max_lost_attempts)s::integer[], %(timeouts)s::float8[], %(expires)s::timestamptz[],
        %(waiting_for)s::integer[], %(receives)s::text[], %(has_dependents)s::boolean[],
        %(schedule_ids)s::bigint[], %(scheduled_fors)s::timestamptz[],
        %(concurrency_limits)s::jsonb[], %(rate_limits)s::jsonb[], %(fair_key)s::text[]
    ) WITH ORDINALITY AS node(name, queue, priority, args, kwargs, run_after, max_attempts,
                              max_lost_attempts, timeout, expires_at, waiting_for, receives,
                              has_dependents, schedule_id, scheduled_for,
                              concurrency_limits, rate_limits, fair_key, n)
),
-- A step's place among the steps of its fair key that are READY from the start.
placed AS (
    SELECT node.*, %(fair_turn)s::integer AS fair_turn,
           row_number() OVER (PARTITION BY node.fair_key, node.waiting_for > 0
                              ORDER BY node.n) - 1 AS ahead
    FROM node
),
inserted AS (
    INSERT INTO django_tasks_q_task
        (name, queue, priority, status, args, kwargs, run_after, enqueued_at,
         attempts, max_attempts, max_lost_attempts, timeout, worker_id, errors, expires_at,
         waiting_for, receives, has_dependents, workflow_id, schedule_id, scheduled_for,
         held_by, concurrency_limits, rate_limits, fair_key, fair_turn, trace_context)
    SELECT name, queue, priority,
           CASE WHEN waiting_for > 0 OR held.held_by IS NOT NULL THEN 'WAITING' ELSE 'READY' END,
           args, kwargs, COALESCE(run_after, now()), now(),
           0, max_attempts, max_lost_attempts, timeout, '', '[]'::jsonb, expires_at,
           waiting_for, receives, has_dependents, %(workflow_id)s::uuid, schedule_id,
           scheduled_for, CASE WHEN waiting_for > 0 THEN NULL ELSE held.held_by END,
           concurrency_limits, rate_limits, fair_key, fair_turn, %(trace_context)s::jsonb
    FROM placed AS task
    CROSS JOIN LATERAL (
        SELECT COALESCE({held_by_pause}, {held_by_turn}) AS held_by
    ) AS held
    ORDER BY n
    RETURNING id, status, queue, priority, run_after, enqueued_at
),
numbered AS (
    SELECT array_agg(id ORDER BY id) AS ids FROM inserted
),
edges AS (
    INSERT INTO django_tasks_q_dependency (task_id, depends_on_id, position, run_if)
    SELECT numbered.ids[edge.task],
           CASE WHEN edge.parent > 0 THEN numbered.ids[edge.parent] ELSE -edge.parent END,
           edge.position, edge.run_if
    FROM numbered, unnest(
        %(edge_tasks)s::integer[], %(edge_parents)s::bigint[], %(edge_positions)s::integer[],
        %(edge_run_ifs)s::text[]
    ) AS edge(task, parent, position, run_if)
    -- The deferred trigger locks each edge's dependency at commit, in this order: by id, as
    -- every other statement that locks tasks, so that two commits cannot deadlock.
    ORDER BY 2, 1
    RETURNING 1
),
notified AS (
    SELECT pg_notify('django_tasks_q', {ready_notice})
    FROM (
        SELECT DISTINCT queue, priority, run_after
        FROM inserted WHERE %(notify)s AND status = 'READY' AND run_after <= now()
    ) AS ready
)
SELECT array_agg(id ORDER BY id), array_agg(status ORDER BY id),
       array_agg(run_after ORDER BY id), min(enqueued_at),
       (SELECT count(*) FROM edges), (SELECT count(*) FROM notified)
FROM inserted;

-- name: written_by_this_transaction
-- Of %(ids)s, the tasks the current transaction inserted (and has not committed): their xmin
-- is this transaction's id. xid8 to xid: the low 32 bits.
SELECT id FROM django_tasks_q_task
WHERE id = ANY(%(ids)s::bigint[])
  AND xmin::text = mod(pg_current_xact_id_if_assigned()::text::numeric, 4294967296)::text;

-- name: existing_dependencies
-- The tasks a new dependent names by id: which exist, and their workflow.
SELECT id, workflow_id FROM django_tasks_q_task WHERE id = ANY(%(ids)s::bigint[]);

-- name: cancel_workflow
-- Every step of a workflow not finished yet: WAITING and READY ones are cancelled at once
-- (their dependents follow, through the dependency trigger); RUNNING ones are asked to stop,
-- as by cancel. Returns each step changed and its status after the call.
WITH requested AS (
    UPDATE django_tasks_q_task
    SET status = CASE WHEN status = 'RUNNING' THEN status ELSE 'CANCELLED' END,
        finished_at = CASE WHEN status = 'RUNNING' THEN finished_at ELSE now() END,
        cancel_requested_at = COALESCE(cancel_requested_at, now()),
        cancel_terminate = cancel_terminate OR %(terminate)s
    WHERE workflow_id = %(workflow_id)s::uuid AND status IN ('WAITING', 'READY', 'RUNNING')
    RETURNING id, status, cancel_terminate
),
notified AS (
    SELECT pg_notify(%(channel)s, id::text || CASE WHEN cancel_terminate THEN ' terminate' ELSE '' END)
    FROM requested
    WHERE status = 'RUNNING' AND %(notify)s
)
SELECT id, status, (SELECT count(*) FROM notified) FROM requested;

-- name: pause
-- Pause a queue (%(queue)s, with %(task_name)s '') or a task name (the other way round): its
-- READY tasks become WAITING, held by the pause (%(key)s), so no claim walks over them; what
-- is enqueued meanwhile is inserted WAITING too (see enqueue). Tasks that become READY
-- otherwise (a retry, a recovered attempt) are left out of claims by the workers, which hear
-- of the pause through %(channel)s. Returns whether it was new, and the tasks held.
-- {paused_rows} is filled when the file is loaded: `queue = %(queue)s` for pause_queue (a
-- range of tasks_q_ready_queue_idx), `name = %(task_name)s` for pause_task.
WITH added AS (
    INSERT INTO django_tasks_q_pause (queue, task_name, reason)
    VALUES (%(queue)s, %(task_name)s, %(reason)s)
    ON CONFLICT (queue, task_name) DO NOTHING
    RETURNING id
),
held AS (
    UPDATE django_tasks_q_task
    SET status = 'WAITING', held_by = %(key)s
    WHERE status = 'READY' AND {paused_rows}
    RETURNING id
)
SELECT (SELECT count(*) FROM added), (SELECT count(*) FROM held), pg_notify(%(channel)s, '');

-- name: resume
-- End a pause (%(queue)s or %(task_name)s, the other ''): the tasks it held are READY again,
-- or held by another pause that still applies to them, and the workers are woken where they
-- should look. Returns whether the pause existed and how many tasks are READY again.
WITH removed AS (
    DELETE FROM django_tasks_q_pause
    WHERE queue = %(queue)s AND task_name = %(task_name)s
    RETURNING id
),
mine AS (
    SELECT id, queue, name
    FROM django_tasks_q_task
    WHERE status = 'WAITING' AND held_by = %(key)s
    FOR UPDATE
),
released AS (
    UPDATE django_tasks_q_task AS task
    SET status = CASE WHEN still.held_by IS NULL THEN 'READY' ELSE 'WAITING' END,
        held_by = still.held_by
    FROM mine
    LEFT JOIN LATERAL (
        -- This statement's snapshot still has the removed pause: leave it out by hand.
        SELECT CASE WHEN pause.queue <> '' THEN 'queue:' || pause.queue
                    ELSE 'task:' || pause.task_name END AS held_by
        FROM django_tasks_q_pause AS pause
        WHERE (pause.queue = mine.queue OR pause.task_name = mine.name)
          AND NOT (pause.queue = %(queue)s AND pause.task_name = %(task_name)s)
        ORDER BY pause.id
        LIMIT 1
    ) AS still ON true
    WHERE task.id = mine.id
    RETURNING task.id, task.status, task.queue, task.priority, task.run_after
),
notified AS (
    SELECT pg_notify('django_tasks_q', {ready_notice})
    FROM (
        SELECT DISTINCT ON (queue) queue, priority, run_after
        FROM released WHERE status = 'READY' AND run_after <= now()
        ORDER BY queue, priority * -1, run_after
    ) AS earliest
    WHERE %(notify)s
)
SELECT (SELECT count(*) FROM removed),
       (SELECT count(*) FROM released WHERE status = 'READY'),
       (SELECT count(*) FROM notified),
       pg_notify(%(channel)s, '');

-- name: paused
-- What is paused now: the workers leave these out of their claims.
SELECT queue, task_name, paused_at, reason FROM django_tasks_q_pause ORDER BY paused_at, id;

-- name: finished
-- The worker's hot path records outcomes and claims tasks in one statement and one commit,
-- built when the file is loaded from the parts below: `finish` (outcomes only, kind-0 rows),
-- `claim` (no outcomes) and `finish_and_claim` (both), each with pick_any_queue; for a
-- worker started with --queues, with pick_any_queue kept to its one queue
-- (`claim_from_queue`, `finish_and_claim_from_queue`) or with pick_from_queues for several
-- (`claim_from_queues`, `finish_and_claim_from_queues`). A statement that leaves out a part it has no use for is
-- planned in less time: on an idle worker the plan costs more than the claim itself.
--
-- Returns one row per recorded outcome (kind 0, its id), one per claimed task (kind 1, with
-- what the worker needs to run it), one per picked task that was cancelled instead of claimed
-- (kind 2: it had expired, or its cancellation was requested), with the same columns, and one
-- per claimed task that a limit held back: kind 3, a concurrency limit (WAITING until a task
-- of its limit finishes), kind 4, a rate limit (READY again, at the start it reserved).
-- Migration 0009's trigger decided, and undid the claim's changes.
--
-- This part, the outcomes: the WHERE clause is the fence. Only the worker holding this
-- attempt may finish it, so a worker that lost its claim (cancelled, recovered) changes
-- nothing. An outcome that asks for another attempt (READY) of a task whose cancellation was
-- requested meanwhile ends it CANCELLED instead: cancel means no further attempt, whatever
-- the worker knew. A lost attempt (lost = true) is counted apart from the task's own attempts.
-- "(status = 'RUNNING') IS TRUE" says status = 'RUNNING' in a form that does not match the
-- predicate of tasks_q_running_idx: written plainly, the planner may walk that whole index
-- (it thinks it small) instead of looking the outcomes' ids up. While the xmin horizon is held
-- it holds an entry for every task run since, and that walk grows with every task.
outcome AS (
    SELECT *
    FROM unnest(
        %(ids)s::bigint[], %(attempts)s::integer[], %(statuses)s::text[], %(results)s::jsonb[],
        %(errors)s::jsonb[], %(max_attempts)s::integer[], %(retry_delays)s::float8[],
        %(lost)s::boolean[]
    ) AS outcome(id, attempt, status, result, error, max_attempts, retry_delay, lost)
),
finished AS (
    UPDATE django_tasks_q_task AS task
    SET status = CASE
            WHEN outcome.status = 'READY' AND task.cancel_requested_at IS NOT NULL
                THEN 'CANCELLED'
            ELSE outcome.status
        END,
        result = outcome.result,
        errors = CASE
            WHEN outcome.error IS NULL THEN task.errors
            ELSE task.errors || jsonb_build_array(outcome.error || jsonb_build_object('at', now()))
        END,
        max_attempts = outcome.max_attempts,
        lost_attempts = task.lost_attempts + outcome.lost::integer,
        run_after = CASE
            WHEN outcome.status = 'READY' AND task.cancel_requested_at IS NULL
                THEN now() + make_interval(secs => outcome.retry_delay)
            ELSE task.run_after
        END,
        finished_at = CASE
            WHEN outcome.status = 'READY' AND task.cancel_requested_at IS NULL THEN NULL
            ELSE now()
        END,
        lease_expires_at = NULL
    FROM outcome
    WHERE task.id = outcome.id
      AND (task.status = 'RUNNING') IS TRUE
      AND task.attempts = outcome.attempt
      AND task.worker_id = %(worker_id)s
    RETURNING task.id
)

-- name: finished_rows
SELECT 0 AS kind, id, {null_task_columns}
FROM finished

-- name: claimed
-- The picked rows, claimed. One picked past its expires_at, or whose cancellation was
-- requested (picked.starts is false), is cancelled instead, in the same UPDATE, so it never
-- starts and does not come back to the next claim. One UPDATE for both: each UPDATE of the
-- task table adds about a quarter of a millisecond to the plan of every claim.
claimed AS (
    UPDATE django_tasks_q_task AS task
    SET status = CASE WHEN picked.starts THEN 'RUNNING' ELSE 'CANCELLED' END,
        attempts = task.attempts + picked.starts::integer,
        started_at = CASE
            WHEN picked.starts THEN COALESCE(task.started_at, now()) ELSE task.started_at
        END,
        last_attempted_at = CASE WHEN picked.starts THEN now() ELSE task.last_attempted_at END,
        worker_id = CASE WHEN picked.starts THEN %(worker_id)s ELSE task.worker_id END,
        lease_expires_at = CASE
            WHEN picked.starts THEN now() + make_interval(secs => %(lease_seconds)s)
            ELSE task.lease_expires_at
        END,
        finished_at = CASE WHEN picked.starts THEN task.finished_at ELSE now() END,
        errors = CASE
            WHEN picked.starts THEN task.errors
            ELSE task.errors || jsonb_build_array(
                CASE
                    WHEN picked.cancel_requested_at IS NOT NULL THEN {cancelled_entry}
                    ELSE {expired_entry} || jsonb_build_object(
                        'message', {expired_message} || ' ' || task.expires_at)
                END || jsonb_build_object('attempt', task.attempts, 'worker_id', '', 'at', now()))
        END
    FROM picked
    WHERE task.id = picked.id
    RETURNING picked.starts, task.*
)

-- name: claimed_rows
-- A concurrency limit's trigger leaves a claimed row WAITING, a rate limit's READY.
SELECT CASE
        WHEN NOT starts THEN 2
        WHEN status = 'RUNNING' THEN 1
        WHEN status = 'WAITING' THEN 3
        ELSE 4
    END AS kind,
    {task_columns}
FROM claimed

-- name: pick_any_queue
-- %(avoid)s: ids this worker gave back because it does not know their task, which it must
-- leave to a worker that does for a while (usually empty). %(paused_queues)s and
-- %(paused_names)s: what is paused (usually nothing); its tasks are held WAITING, but one
-- that became READY since the pause (a retry, a recovered attempt, an enqueue racing the
-- pause) must not be claimed either.
-- The MATERIALIZED CTE is an optimisation fence. Postgres first picks and locks ids, walking
-- the partial ready index in claim order and skipping rows other workers hold, then joins the
-- UPDATE to exactly those ids. Inlined, the planner may lock rows it then discards. The
-- ORDER BY matches tasks_q_ready_idx, so the walk stops after LIMIT rows.
-- The walk starts after %(floor)s, a claim position (priority * -1, run_after, id): where this
-- worker's last claim stopped, or the lowest position possible for a scan from the start. The
-- row comparison is the index's start key, so the entries of tasks claimed before it are not
-- visited; while some session holds the xmin horizon they cannot be removed, and walking
-- them would cost every claim more and more (docs/internals.md, "Claims under a held xmin
-- horizon"). The worker decides where to start: worker/claim_floor.py.
-- {one_queue} is filled in when the file is loaded: nothing, or for a worker started with one
-- queue in --queues, "AND queue = %(queue)s": the same walk through
-- tasks_q_ready_queue_idx, which orders each queue's rows alike, is planned in less time than
-- pick_from_queues' walk per queue.
picked AS MATERIALIZED (
    SELECT id, cancel_requested_at,
        (expires_at IS NULL OR expires_at > now()) AND cancel_requested_at IS NULL AS starts
    FROM django_tasks_q_task
    WHERE status = 'READY' {one_queue} AND run_after <= now() AND id <> ALL(%(avoid)s::bigint[])
      AND queue <> ALL(%(paused_queues)s::text[]) AND name <> ALL(%(paused_names)s::text[])
      AND (priority * -1, run_after, id)
          > (%(floor_rank)s::integer, %(floor_run_after)s::timestamptz, %(floor_id)s::bigint)
    ORDER BY priority * -1, run_after, id
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)

-- name: pick_from_queues
-- Claims only from %(queues)s, each from its own floor (the arrays run in parallel, one entry
-- per queue; see pick_any_queue). `queue = ANY(...)` cannot walk an index in claim order
-- across several queues (it would sort every ready row of those queues on each claim), so
-- each queue is read in order through tasks_q_ready_queue_idx, at most LIMIT rows each, and
-- the best LIMIT of those are kept. Rows locked but not kept are unlocked at commit.
picked AS MATERIALIZED (
    SELECT candidate.id, candidate.cancel_requested_at, candidate.starts
    FROM unnest(
        %(queues)s::text[], %(floor_ranks)s::integer[], %(floor_run_afters)s::timestamptz[],
        %(floor_ids)s::bigint[]
    ) AS wanted(queue, floor_rank, floor_run_after, floor_id)
    -- A paused queue is not read at all.
    CROSS JOIN LATERAL (
        SELECT id, priority, run_after, cancel_requested_at,
            (expires_at IS NULL OR expires_at > now()) AND cancel_requested_at IS NULL AS starts
        FROM django_tasks_q_task
        WHERE wanted.queue <> ALL(%(paused_queues)s::text[])
          AND status = 'READY' AND queue = wanted.queue AND run_after <= now()
          AND id <> ALL(%(avoid)s::bigint[]) AND name <> ALL(%(paused_names)s::text[])
          AND (priority * -1, run_after, id)
              > (wanted.floor_rank, wanted.floor_run_after, wanted.floor_id)
        ORDER BY priority * -1, run_after, id
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED
    ) AS candidate
    ORDER BY candidate.priority * -1, candidate.run_after, candidate.id
    LIMIT %(limit)s
)

-- name: release
-- Gives back tasks this worker claimed but never started, as if they had not been claimed:
-- with %(listed)s true, the ids in %(ids)s (unstarted at shutdown, or deferred because this
-- worker does not know their name: then due again in %(delay)s seconds); with it false,
-- every task held under this worker id except those ids. That second form follows a lost
-- connection: a claim may have committed without the worker receiving its rows, and as
-- worker ids are unique per process start, a RUNNING row under this id that the worker does
-- not know about never started. A task whose cancellation was requested meanwhile is
-- CANCELLED instead: it must never start.
WITH released AS (
    UPDATE django_tasks_q_task
    SET status = CASE WHEN cancel_requested_at IS NULL THEN 'READY' ELSE 'CANCELLED' END,
        attempts = attempts - 1,
        started_at = CASE WHEN attempts = 1 THEN NULL ELSE started_at END,
        last_attempted_at = CASE WHEN attempts = 1 THEN NULL ELSE last_attempted_at END,
        run_after = CASE
            WHEN %(delay)s::float8 > 0 THEN now() + make_interval(secs => %(delay)s::float8)
            ELSE run_after
        END,
        finished_at = CASE WHEN cancel_requested_at IS NULL THEN NULL ELSE now() END,
        errors = CASE
            WHEN cancel_requested_at IS NULL THEN errors
            ELSE errors || jsonb_build_array({cancelled_entry} || jsonb_build_object(
                'attempt', attempts, 'worker_id', worker_id, 'at', now()))
        END,
        lease_expires_at = NULL
    WHERE status = 'RUNNING'
      AND worker_id = %(worker_id)s
      AND (id = ANY(%(ids)s::bigint[])) = %(listed)s
    RETURNING id, status, queue, priority, run_after
),
-- Released rows sit where they were in claim order, behind where workers' claims now start:
-- the notification tells them to look there (see pick_any_queue).
notified AS (
    SELECT pg_notify('django_tasks_q', {ready_notice})
    FROM (
        SELECT DISTINCT ON (queue) queue, priority, run_after
        FROM released WHERE status = 'READY' AND run_after <= now()
        ORDER BY queue, priority * -1, run_after
    ) AS earliest
    WHERE %(notify)s
)
SELECT id, status, (SELECT count(*) FROM notified) FROM released;

-- name: cancel
-- A WAITING or READY task is cancelled at once. A RUNNING one is asked to stop: the workers hear of it
-- through a NOTIFY on the cancel channel at once (or at their next heartbeat without
-- LISTEN/NOTIFY), so a task claimed but not started yet never starts, and a running task
-- sees it through context.is_cancelled(). Returns each task's status after the call; no row
-- for a task that had already finished.
WITH requested AS (
    UPDATE django_tasks_q_task
    SET status = CASE WHEN status = 'RUNNING' THEN status ELSE 'CANCELLED' END,
        finished_at = CASE WHEN status = 'RUNNING' THEN finished_at ELSE now() END,
        cancel_requested_at = COALESCE(cancel_requested_at, now()),
        cancel_terminate = cancel_terminate OR %(terminate)s
    WHERE id = ANY(%(ids)s::bigint[]) AND status IN ('WAITING', 'READY', 'RUNNING')
    RETURNING id, status, cancel_terminate
),
notified AS (
    SELECT pg_notify(%(channel)s, id::text || CASE WHEN cancel_terminate THEN ' terminate' ELSE '' END)
    FROM requested
    WHERE status = 'RUNNING' AND %(notify)s
)
SELECT id, status, (SELECT count(*) FROM notified) FROM requested;

-- name: retry_now
-- An operator's "retry now" on tasks that ended FAILED or CANCELLED: READY again, due now, with
-- %(more_attempts)s more attempts allowed. Attempts and the errors of earlier attempts stay as
-- history. Only rows still FAILED or CANCELLED change, so two operators retrying the same task
-- at once retry it once.
WITH retried AS (
    UPDATE django_tasks_q_task
    SET status = 'READY',
        run_after = now(),
        finished_at = NULL,
        result = NULL,
        max_attempts = attempts + %(more_attempts)s,
        worker_id = '',
        lease_expires_at = NULL,
        cancel_requested_at = NULL,
        cancel_terminate = false,
        expires_at = NULL
    WHERE id = ANY(%(ids)s::bigint[]) AND status IN ('FAILED', 'CANCELLED')
      -- A step cancelled because a dependency did not succeed waits for that dependency:
      -- retrying the dependency brings it back (migration 0007's trigger).
      AND (errors -> -1 ->> 'type') IS DISTINCT FROM 'django_tasks_q.exceptions.DependencyNotMet'
    RETURNING id, queue, priority, run_after
),
notified AS (
    SELECT pg_notify('django_tasks_q', {ready_notice})
    FROM (
        SELECT DISTINCT ON (queue) queue, priority, run_after
        FROM retried ORDER BY queue, priority * -1, run_after
    ) AS earliest
    WHERE %(notify)s
)
SELECT id, (SELECT count(*) FROM notified) FROM retried;

-- name: worker_register
INSERT INTO django_tasks_q_worker
    (id, name, hostname, pid, queues, concurrency, state, started_at, last_heartbeat_at,
     tasks_succeeded, tasks_failed)
VALUES
    (%(worker_id)s, %(name)s, %(hostname)s, %(pid)s, %(queues)s::jsonb, %(concurrency)s,
     'RUNNING', now(), now(), 0, 0)
ON CONFLICT (id) DO UPDATE
SET name = EXCLUDED.name, hostname = EXCLUDED.hostname, pid = EXCLUDED.pid, queues = EXCLUDED.queues,
    concurrency = EXCLUDED.concurrency, state = 'RUNNING', last_heartbeat_at = now(),
    stopped_at = NULL;

-- name: heartbeat
-- Proof of life: the worker row, and the lease of every task this worker holds (running or
-- claimed and waiting for a thread: %(ids)s, fenced on the holder), so a long task is never
-- taken for lost while its worker lives. A RUNNING row under this worker's id that it does not
-- hold is one it never received; the worker gives those back (release, listed false). Returns whether the worker row still exists, how many leases were extended and the
-- ids of held tasks someone asked to cancel.
-- SKIP LOCKED: a row locked now is being finished by the worker's own main connection (or
-- cancelled, or looked at by a rescuer). Waiting for it could deadlock with finish_and_claim
-- (which locks the rows it finishes in id order, and the dependents their triggers settle),
-- and a deadlock costs both statements deadlock_timeout. Its lease is extended at the next beat if it still runs.
WITH alive AS (
    UPDATE django_tasks_q_worker
    SET last_heartbeat_at = now(),
        tasks_succeeded = tasks_succeeded + %(succeeded)s,
        tasks_failed = tasks_failed + %(failed)s
    WHERE id = %(worker_id)s
    RETURNING id
),
extended AS (
    UPDATE django_tasks_q_task AS task
    SET lease_expires_at = now() + make_interval(secs => %(lease_seconds)s)
    FROM (
        SELECT id
        FROM django_tasks_q_task
        WHERE id = ANY(%(ids)s::bigint[])
          AND (status = 'RUNNING') IS TRUE  -- by id, not tasks_q_running_idx: see `finished`
          AND worker_id = %(worker_id)s
        FOR UPDATE SKIP LOCKED
    ) AS free
    WHERE task.id = free.id
    RETURNING task.id, task.cancel_requested_at, task.cancel_terminate
)
SELECT (SELECT count(*) FROM alive),
       (SELECT count(*) FROM extended),
       (SELECT coalesce(array_agg(id), '{}') FROM extended WHERE cancel_requested_at IS NOT NULL),
       (SELECT coalesce(array_agg(id), '{}') FROM extended WHERE cancel_terminate);

-- name: lost_expired
-- Attempts whose lease ran out: their worker stopped heartbeating (killed, out of memory,
-- frozen, its machine gone). Every live worker looks; SKIP LOCKED gives each to exactly one,
-- which decides what happens (retry.after_lost) and writes it with record_lost in the same
-- transaction.
-- Only leases that expired at or after %(after)s: every lease is set to the future, so one that
-- had not expired at the rescuer's previous look expires after it. The walk of
-- tasks_q_running_idx then starts there, not at the entries of every task run since some
-- session began holding the xmin horizon (see pick_any_queue); worker/rescuer.py looks from
-- the start now and then.
SELECT {task_columns}, worker_id, lease_expires_at, cancel_requested_at IS NOT NULL
FROM django_tasks_q_task
WHERE status = 'RUNNING' AND lease_expires_at < now() AND lease_expires_at >= %(after)s
ORDER BY lease_expires_at
LIMIT %(limit)s
FOR UPDATE SKIP LOCKED;

-- name: lost_predecessors
-- Attempts held by earlier processes started under this worker's name: a worker restarted
-- after kill -9 (systemd, Kubernetes) knows its predecessor is gone, so they are lost now,
-- not when their lease runs out. worker_id = name covers rows written before ids were made
-- unique per start.
SELECT {task_columns}, worker_id, lease_expires_at, cancel_requested_at IS NOT NULL
FROM django_tasks_q_task
WHERE status = 'RUNNING'
  AND (worker_id = %(name)s OR worker_id IN (
      SELECT id FROM django_tasks_q_worker WHERE name = %(name)s AND id <> %(worker_id)s))
FOR UPDATE SKIP LOCKED;

-- name: lost_abandoned
-- Attempts this worker itself gave up: the grace period ran out and it stopped them.
SELECT {task_columns}, worker_id, lease_expires_at, cancel_requested_at IS NOT NULL
FROM django_tasks_q_task
WHERE status = 'RUNNING' AND worker_id = %(worker_id)s AND id = ANY(%(ids)s::bigint[])
FOR UPDATE SKIP LOCKED;

-- name: record_lost
-- Writes what retry.after_lost decided for lost attempts, fenced on the holder and attempt
-- the decision was made for. READY ones are due at once and wake the workers.
WITH lost AS (
    SELECT *
    FROM unnest(
        %(ids)s::bigint[], %(attempts)s::integer[], %(holders)s::text[], %(statuses)s::text[],
        %(max_attempts)s::integer[], %(errors)s::jsonb[]
    ) AS lost(id, attempt, holder, status, max_attempts, error)
),
recorded AS (
    UPDATE django_tasks_q_task AS task
    SET status = lost.status,
        errors = task.errors || jsonb_build_array(lost.error || jsonb_build_object('at', now())),
        lost_attempts = task.lost_attempts + 1,
        max_attempts = lost.max_attempts,
        run_after = CASE WHEN lost.status = 'READY' THEN now() ELSE task.run_after END,
        finished_at = CASE WHEN lost.status = 'READY' THEN NULL ELSE now() END,
        lease_expires_at = NULL
    FROM lost
    WHERE task.id = lost.id
      AND (task.status = 'RUNNING') IS TRUE  -- by id, not tasks_q_running_idx: see `finished`
      AND task.attempts = lost.attempt
      AND task.worker_id = lost.holder
    RETURNING task.id, task.status, task.queue, task.priority, task.run_after
),
notified AS (
    SELECT pg_notify('django_tasks_q', {ready_notice})
    FROM (
        SELECT DISTINCT ON (queue) queue, priority, run_after
        FROM recorded WHERE status = 'READY' ORDER BY queue, priority * -1, run_after
    ) AS earliest
    WHERE %(notify)s
)
SELECT id, (SELECT count(*) FROM notified) FROM recorded;

-- name: worker_replaced
-- Earlier processes under this worker's name are gone: mark their rows stopped.
UPDATE django_tasks_q_worker
SET state = 'STOPPED', stopped_at = now()
WHERE name = %(name)s AND id <> %(worker_id)s AND state = 'RUNNING'
RETURNING id;

-- name: worker_stop
UPDATE django_tasks_q_worker
SET state = 'STOPPED', stopped_at = now(), last_heartbeat_at = now(),
    tasks_succeeded = tasks_succeeded + %(succeeded)s,
    tasks_failed = tasks_failed + %(failed)s
WHERE id = %(worker_id)s;

-- name: prune_workers
-- Forgets workers not heard of for a long time (stopped, or died without saying so).
DELETE FROM django_tasks_q_worker
WHERE last_heartbeat_at < now() - make_interval(secs => %(older_than)s);

-- name: prune_tasks
-- Deletes finished tasks past their retention, up to %(limit)s of each status: SUCCESSFUL ones
-- finished more than %(keep_successful)s seconds ago, FAILED and CANCELLED ones more than
-- %(keep_failed)s (NULL keeps them). One pick per status, oldest first, so each is a range
-- scan of tasks_q_finished_idx (status, finished_at) that stops after the limit; a single
-- pick with OR makes the planner scan the table. SKIP LOCKED lets every worker prune side by
-- side without waiting for another.
WITH successful AS (
    SELECT id FROM django_tasks_q_task
    WHERE status = 'SUCCESSFUL'
      AND finished_at < now() - make_interval(secs => %(keep_successful)s::float8)
    ORDER BY finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
failed AS (
    SELECT id FROM django_tasks_q_task
    WHERE status = 'FAILED'
      AND finished_at < now() - make_interval(secs => %(keep_failed)s::float8)
    ORDER BY finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
),
cancelled AS (
    SELECT id FROM django_tasks_q_task
    WHERE status = 'CANCELLED'
      AND finished_at < now() - make_interval(secs => %(keep_failed)s::float8)
    ORDER BY finished_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED
)
DELETE FROM django_tasks_q_task
WHERE id IN (SELECT id FROM successful UNION ALL SELECT id FROM failed
             UNION ALL SELECT id FROM cancelled);

-- name: database_now
-- statement_timestamp(), not now(): inside a transaction now() is when it began, and a
-- schedule saved after waiting for beat's row lock must see a time after beat's commit.
SELECT statement_timestamp();

-- name: notify_schedules
-- Delivered at commit, to the beats LISTENing on the schedules channel.
SELECT pg_notify(%(channel)s, '');

-- name: lock_schedule_sync
-- Beats starting together sync declared schedules one after the other; the key is arbitrary
-- but fixed: 'tasks_q' read as a big-endian integer.
SELECT pg_advisory_xact_lock(32758245650292593);
