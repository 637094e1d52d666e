"""``manage.py taskbench``: how fast this deployment enqueues, runs and starts tasks.

Everything happens on a queue of its own ("taskbench" unless ``--queue`` says otherwise) that
the benchmark's own worker processes serve; rows of other queues are never read or written.
Rates and latencies come from the database's timestamps, so they measure the queue, not the
Python start-up of the processes around it.

Only the ``taskbench`` command imports this package. Its modules:

- ``options``: what a run is asked to do (``BenchOptions``) and its error (``BenchError``).
- ``benchmark``: the order of the phases and the line each one reports (``run``).
- ``phases``: each measurement (enqueues, drain, latency, SQL ceiling).
- ``pressure``: the steady load, window by window, optionally with the xmin horizon held.
- ``workers``: the ``runtaskworker`` processes: start, watch, measure, stop.
- ``queries``: the benchmark's reads and deletes of the task table (``queries.sql``).
- ``report``: the results and how they are printed.
- ``tasks``: the tasks the workers run; they find them by name, by importing that module.
"""
