"""A Django task outside <app>/tasks.py: not autodiscovered, found by its module path."""

from django_tasks_q.compat import task


@task
def double(x):
    return 2 * x


def not_a_task(x):
    return x
