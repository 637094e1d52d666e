"""The worker list: every runtaskworker process as it last reported itself."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import admin
from django.db.models import QuerySet
from django.db.models.functions import Now
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from django_tasks_q.admin.common import ReadOnlyPages
from django_tasks_q.conf import settings as conf
from django_tasks_q.durations import format_duration
from django_tasks_q.models import Worker, WorkerState


class HeartbeatFilter(admin.SimpleListFilter):
    title = _("heartbeat")
    parameter_name = "heartbeat"

    def lookups(self, request, model_admin):
        return [("live", _("live (within the lease)")), ("lost", _("lost (past the lease)"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Worker]) -> QuerySet[Worker]:
        cutoff = Now() - timedelta(seconds=conf.LEASE_SECONDS)
        if self.value() == "live":
            return queryset.filter(last_heartbeat_at__gte=cutoff)
        if self.value() == "lost":
            return queryset.filter(last_heartbeat_at__lt=cutoff)
        return queryset


class WorkerAdmin(ReadOnlyPages):
    list_display = ("id", "name", "hostname", "pid", "queues_display", "concurrency", "state",
                    "started_at", "heartbeat", "tasks_succeeded", "tasks_failed")  # fmt: skip
    list_filter = ("state", HeartbeatFilter, "hostname")
    search_fields = ("id", "name", "hostname")
    ordering = ("-last_heartbeat_at",)
    readonly_fields = [field.name for field in Worker._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # workers register themselves

    @admin.display(description=_("queues"))
    def queues_display(self, worker: Worker) -> str:
        return ", ".join(worker.queues) if worker.queues else _("all")

    @admin.display(description=_("last heartbeat"), ordering="last_heartbeat_at")
    def heartbeat(self, worker: Worker) -> str:
        """How long ago; a running worker that missed two heartbeats is *stale*, one silent
        for longer than the lease is *lost* (its tasks are being recovered)."""
        age = max((timezone.now() - worker.last_heartbeat_at).total_seconds(), 0.0)
        condition = "live"
        if worker.state == WorkerState.RUNNING and age > conf.LEASE_SECONDS:
            condition = "lost"
        elif worker.state == WorkerState.RUNNING and age > 2 * conf.HEARTBEAT_INTERVAL:
            condition = "stale"
        return format_html(
            '<span class="tasks-q-heartbeat-{}" title="{}">{} ago{}</span>',
            condition,
            worker.last_heartbeat_at.isoformat(),
            format_duration(age),
            f" ({condition})" if condition != "live" else "",
        )
