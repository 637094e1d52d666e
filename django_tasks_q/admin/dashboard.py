"""The admin's monitoring dashboard: is everything OK, what is failing, and where to look.

One page, registered for the :class:`~django_tasks_q.models.Dashboard` proxy so that it has a
place in the admin's app index. The numbers come from :mod:`django_tasks_q.stats`, read in one
transaction; the throughput chart is an SVG drawn here, so the page needs no JavaScript and no
asset from elsewhere. ``static/django_tasks_q/dashboard.js`` refreshes it in place.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from urllib.parse import urlencode

import django
from django.contrib import admin
from django.contrib.auth import get_permission_codename
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpRequest
from django.template.response import TemplateResponse
from django.urls import NoReverseMatch, path, reverse
from django.utils import timezone
from django.utils.formats import number_format
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator
from django.utils.translation import gettext_lazy as _

from django_tasks_q import stats
from django_tasks_q.conf import settings as conf
from django_tasks_q.durations import format_duration
from django_tasks_q.models import Task

REFRESH_SECONDS = 5
FINISHED_WINDOW = 3600  # per-queue outcomes and the slowest tasks
FAILING_WINDOW = 24 * 3600
CHART_MINUTES = 60

# Chart geometry, in SVG user units: one 10-unit slot per minute, axis labels around the plot.
SLOT, BAR = 10, 8
LEFT, TOP, PLOT_HEIGHT, BOTTOM = 56, 12, 150, 40


def link(url: str | None, text: object) -> SafeString:
    """``text`` as a link to ``url``, or as plain text when there is nowhere to go."""
    if not url:
        return format_html("{}", text)
    return format_html('<a href="{}">{}</a>', url, text)


class Links:
    """URLs of the admin pages the dashboard points to, on the admin site that serves it.

    A model not registered on that site gets no links rather than an error.
    """

    def __init__(self, site_name: str) -> None:
        self.site_name = site_name

    def _reverse(self, name: str, *args: object) -> str | None:
        try:
            return reverse(f"admin:django_tasks_q_{name}", args=args, current_app=self.site_name)
        except NoReverseMatch:
            return None

    def tasks(self, **filters: object) -> str | None:
        """The task list filtered with the admin's own lookups (``status__exact``, ...)."""
        url = self._reverse("task_changelist")
        if url is None:
            return None
        values = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in filters.items()}
        return f"{url}?{urlencode(values)}" if values else url

    def task(self, pk: int) -> str | None:
        return self._reverse("task_change", pk)

    def worker(self, pk: str) -> str | None:
        return self._reverse("worker_change", pk)

    def schedule(self, pk: int) -> str | None:
        return self._reverse("schedule_change", pk)

    def workers(self) -> str | None:
        return self._reverse("worker_changelist")

    def pauses(self) -> str | None:
        return self._reverse("pause_changelist")


@dataclass
class QueueRow:
    name: str
    ready: int = 0
    scheduled: int = 0
    running: int = 0
    succeeded: int = 0
    failed: int = 0
    oldest_ready_age: float | None = None
    waiting: int = 0
    cells: list[tuple[str, SafeString]] = field(default_factory=list)  # (column, html)


def queue_rows(
    backlog: Sequence[stats.QueueBacklog],
    finished: Sequence[stats.QueueFinished],
    now: datetime,
    links: Links,
) -> list[QueueRow]:
    """Every queue with something waiting, running or finished in the last hour, and a total
    row when there are several."""
    rows: dict[str, QueueRow] = {}
    for item in backlog:
        rows[item.queue] = QueueRow(
            item.queue,
            item.ready,
            item.scheduled,
            item.running,
            oldest_ready_age=item.oldest_ready_age,
            waiting=item.waiting,
        )
    for item in finished:
        row = rows.setdefault(item.queue, QueueRow(item.queue))
        row.succeeded, row.failed = item.succeeded, item.failed
    ordered = [rows[name] for name in sorted(rows)]
    if len(ordered) > 1:
        ages = [row.oldest_ready_age for row in ordered if row.oldest_ready_age is not None]
        total = QueueRow(
            "",
            *(
                sum(getattr(row, name) for row in ordered)
                for name in ("ready", "scheduled", "running", "succeeded", "failed")
            ),
            oldest_ready_age=max(ages, default=None),
            waiting=sum(row.waiting for row in ordered),
        )
        ordered.append(total)
    since = now - timedelta(seconds=FINISHED_WINDOW)
    # Each number links to the task list showing the tasks it counts.
    lookups = {
        "ready": {"status__exact": "READY", "run_after__lte": now},
        "running": {"status__exact": "RUNNING"},
        "scheduled": {"status__exact": "READY", "run_after__gt": now},
        "waiting": {"status__exact": "WAITING"},
        "succeeded": {"status__exact": "SUCCESSFUL", "finished_at__gte": since},
        "failed": {"status__exact": "FAILED", "finished_at__gte": since},
    }
    for row in ordered:
        where = {"queue": row.name} if row.name else {}
        row.cells = [
            (column, link(links.tasks(**lookup, **where), getattr(row, column)))
            for column, lookup in lookups.items()
        ]
        row.cells.append(("oldest", format_html("{}", format_duration(row.oldest_ready_age))))
    return ordered


@dataclass(frozen=True)
class Bar:
    minute: stats.Minute
    label: str  # the minute in the current time zone, e.g. 14:05
    x: float
    succeeded_y: float
    succeeded_height: float
    failed_y: float
    failed_height: float
    failed_url: str | None


@dataclass(frozen=True)
class Chart:
    bars: list[Bar]
    y_ticks: list[tuple[float, str]]  # (y, label)
    x_ticks: list[tuple[float, str]]  # (x, label)
    succeeded: int
    failed: int
    busiest: Bar | None
    zone: str
    # Geometry the template places things with, so that it does no arithmetic.
    width: int = 0
    height: int = TOP + PLOT_HEIGHT + BOTTOM
    plot_left: int = LEFT
    plot_right: int = 0
    plot_top: int = TOP
    plot_bottom: int = TOP + PLOT_HEIGHT
    plot_height: int = PLOT_HEIGHT
    bar_width: int = BAR
    y_label_x: int = LEFT - 6
    y_title_at: float = TOP + PLOT_HEIGHT / 2
    tick_end_y: int = TOP + PLOT_HEIGHT + 4
    x_label_y: int = TOP + PLOT_HEIGHT + 16
    x_title_at: float = 0
    x_title_y: int = TOP + PLOT_HEIGHT + BOTTOM - 4


def _scale_top(value: int) -> int:
    """The smallest 1, 2 or 5 times a power of ten that is at least ``value``."""
    magnitude = 1
    while True:
        for step in (1, 2, 5):
            if value <= step * magnitude:
                return step * magnitude
        magnitude *= 10


def _height(count: int, top: int) -> float:
    if not count:
        return 0.0
    return max(round(count / top * PLOT_HEIGHT, 2), 1.0)  # a single task stays visible


def throughput_chart(minutes: Sequence[stats.Minute], links: Links) -> Chart:
    top = _scale_top(max((minute.total for minute in minutes), default=0))
    bottom = TOP + PLOT_HEIGHT
    bars, x_ticks = [], []
    for index, minute in enumerate(minutes):
        x = LEFT + index * SLOT + (SLOT - BAR) / 2
        succeeded = _height(minute.succeeded, top)
        failed = _height(minute.failed, top)
        local = timezone.localtime(minute.start)
        label = f"{local:%H:%M}"
        failed_url = None
        if minute.failed:
            until = minute.start + timedelta(minutes=1)
            failed_url = links.tasks(
                status__exact="FAILED", finished_at__gte=minute.start, finished_at__lt=until
            )
        bars.append(Bar(minute, label, x, bottom - succeeded, succeeded,
                        bottom - succeeded - failed, failed, failed_url))  # fmt: skip
        if local.minute % 10 == 0:
            x_ticks.append((x + BAR / 2, label))
    # Zero, the top and, when it is a whole number, half-way.
    values = [0, top // 2, top] if top % 2 == 0 else [0, top]
    y_ticks = [(bottom - PLOT_HEIGHT * value / top, number_format(value)) for value in values]
    right = LEFT + SLOT * len(minutes)
    return Chart(
        bars=bars,
        y_ticks=y_ticks,
        x_ticks=x_ticks,
        succeeded=sum(minute.succeeded for minute in minutes),
        failed=sum(minute.failed for minute in minutes),
        busiest=max(
            (bar for bar in bars if bar.minute.total),
            key=lambda bar: bar.minute.total,
            default=None,
        ),
        zone=timezone.get_current_timezone_name(),
        width=right + 8,
        plot_right=right,
        x_title_at=(LEFT + right) / 2,
    )


@dataclass(frozen=True)
class WorkerRow:
    worker: stats.WorkerActivity
    url: str | None
    heartbeat: str  # how long ago
    stale: bool  # missed two heartbeats
    lost: bool  # silent for longer than the lease: its tasks are being recovered
    running_links: list[SafeString]


def worker_rows(workers: Sequence[stats.WorkerActivity], links: Links) -> list[WorkerRow]:
    stale_after = 2 * conf.HEARTBEAT_INTERVAL
    return [
        WorkerRow(
            worker=worker,
            url=links.worker(worker.id),
            heartbeat=format_duration(worker.heartbeat_age),
            stale=worker.heartbeat_age > stale_after,
            lost=worker.heartbeat_age > conf.LEASE_SECONDS,
            running_links=[
                link(
                    links.tasks(status__exact="RUNNING", worker_id=worker.id, name=name),
                    f"{name} ({count})" if count > 1 else name,
                )
                for name, count in worker.running_names
            ],
        )
        for worker in workers
    ]


def limit_row(item: stats.LimitNow, now: datetime, links: Links) -> dict[str, object]:
    """One limit key: what it allows, and what it runs and holds back now."""
    if item.kind == "concurrency":
        allowed = _("%(count)d running") % {"count": item.limit}
        held = item.held
    else:
        allowed = _("1 start every %(every)s") % {"every": format_duration(item.limit)}
        held = item.throttled
    booked = (
        format_duration((item.booked_until - now).total_seconds())
        if item.booked_until is not None and item.booked_until > now
        else ""
    )
    return {
        "key": item.key,
        "allowed": allowed,
        "running": item.running if item.kind == "concurrency" else "",
        "held": held,
        "booked": booked,
    }


def error_text(item: stats.FailingTask) -> str:
    text = ": ".join(part for part in (item.error_type, item.error_message) if part)
    return Truncator(text).chars(300) if text else str(_("no error recorded"))


def collect(using: str, links: Links) -> dict[str, object]:
    """Every panel's numbers, read in one transaction so they share one ``now()``."""
    with transaction.atomic(using=using):
        now = stats.database_now(using)
        backlog = stats.queue_backlog(using)
        finished = stats.queue_finished(using, FINISHED_WINDOW)
        minutes = stats.throughput(using, CHART_MINUTES)
        failing = stats.top_failing(using, FAILING_WINDOW)
        slowest = stats.slowest(using, FINISHED_WINDOW)
        workers, worker_counts = stats.workers(
            using, lease=conf.LEASE_SECONDS, stale_after=2 * conf.HEARTBEAT_INTERVAL
        )
        schedules = stats.schedules_due(using)
        paused = stats.pauses(using)
        limits = stats.limits(using)
    hour_ago = now - timedelta(seconds=FINISHED_WINDOW)
    day_ago = now - timedelta(seconds=FAILING_WINDOW)
    return {
        "now": now,
        "queues": queue_rows(backlog, finished, now, links),
        "paused": [
            {
                "what": (
                    _("queue %(name)s") % {"name": item.queue}
                    if item.queue
                    else _("task %(name)s") % {"name": item.task_name}
                ),
                "since": format_duration((now - item.since).total_seconds()),
                "reason": item.reason,
                "held": item.held,
            }
            for item in paused
        ],
        "pauses_url": links.pauses(),
        "limits": [limit_row(item, now, links) for item in limits],
        "chart": throughput_chart(minutes, links),
        "failing": [
            {
                "name": link(
                    links.tasks(status__exact="FAILED", name=item.name, finished_at__gte=day_ago),
                    item.name,
                ),
                "failures": item.failures,
                "error": link(links.task(item.latest_id), error_text(item)),
                "ago": format_duration((now - item.latest_at).total_seconds()),
            }
            for item in failing
        ],
        "slowest": [
            {
                "name": link(links.tasks(name=item.name, finished_at__gte=hour_ago), item.name),
                "finished": item.finished,
                "p50": format_duration(item.p50),
                "p95": format_duration(item.p95),
            }
            for item in slowest
        ],
        "workers": worker_rows(workers, links),
        "worker_counts": worker_counts,
        "workers_url": links.workers(),
        "schedules": [
            {
                "schedule": item,
                "name": link(links.schedule(item.id), item.name),
                "due": item.due_in <= 0,
                # Past BEAT_MISSED_AFTER beat treats the tick as missed: no beat is keeping up.
                "late": item.due_in < -conf.BEAT_MISSED_AFTER,
                "due_in": format_duration(abs(item.due_in)),
            }
            for item in schedules
        ],
    }


class DashboardAdmin(admin.ModelAdmin):
    """The dashboard page, in place of the proxy model's change list. Whoever may view tasks
    may view it; there is nothing to add, change or delete."""

    template = "admin/django_tasks_q/dashboard.html"

    def has_view_permission(self, request: HttpRequest, obj: object = None) -> bool:
        # Task's permissions, not the proxy's: the page shows tasks, so the people who may
        # see tasks see it, without a second permission to hand out. Change implies view, as
        # everywhere in the admin.
        opts = Task._meta
        return any(
            request.user.has_perm(f"{opts.app_label}.{get_permission_codename(action, opts)}")
            for action in ("view", "change")
        )

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def get_urls(self) -> list:
        # The dashboard alone: the proxy's change, history and delete pages would show tasks.
        name = f"{self.opts.app_label}_{self.opts.model_name}_changelist"
        return [path("", self.admin_site.admin_view(self.changelist_view), name=name)]

    def changelist_view(
        self, request: HttpRequest, extra_context: dict | None = None
    ) -> TemplateResponse:
        if not self.has_view_permission(request):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": _("Task dashboard"),
            "opts": self.opts,
            "app_label": self.opts.app_label,
            "refresh_seconds": REFRESH_SECONDS,
            # Django 6.1 turned the admin's breadcrumbs into a list, styled only as one.
            "list_breadcrumbs": django.VERSION >= (6, 1),
            **collect(conf.DATABASE, Links(self.admin_site.name)),
            **(extra_context or {}),
        }
        request.current_app = self.admin_site.name
        return TemplateResponse(request, self.template, context)
