"""The worker list: every runtaskworker process as it last reported itself."""

from __future__ import annotations

from datetime import timedelta

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.translation import gettext_lazy as _

from django_tasks_q.admin.common import ReadOnlyPages, format_duration
from django_tasks_q.conf import settings as conf
from django_tasks_q.models import Worker, WorkerState


class StaleHeartbeatFilter(admin.SimpleListFilter):
    title = _("heartbeat")
    parameter_name = "heartbeat"

    def lookups(self, request, model_admin):
        return [("live", _("within the lease")), ("stale", _("older than the lease"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Worker]) -> QuerySet[Worker]:
        cutoff = timezone.now() - timedelta(seconds=conf.LEASE_SECONDS)
        if self.value() == "live":
            return queryset.filter(last_heartbeat_at__gte=cutoff)
        if self.value() == "stale":
            return queryset.filter(last_heartbeat_at__lt=cutoff)
        return queryset


class WorkerAdmin(ReadOnlyPages):
    list_display = ("id", "hostname", "pid", "queues_display", "concurrency", "state",
                    "started_at", "heartbeat", "tasks_succeeded", "tasks_failed")  # fmt: skip
    list_filter = ("state", StaleHeartbeatFilter, "hostname")
    search_fields = ("id", "hostname")
    ordering = ("-last_heartbeat_at",)
    readonly_fields = [field.name for field in Worker._meta.fields]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # workers register themselves

    @admin.display(description=_("queues"))
    def queues_display(self, worker: Worker) -> str:
        return ", ".join(worker.queues) if worker.queues else _("all")

    @admin.display(description=_("last heartbeat"), ordering="last_heartbeat_at")
    def heartbeat(self, worker: Worker) -> str:
        age = (timezone.now() - worker.last_heartbeat_at).total_seconds()
        stale = worker.state == WorkerState.RUNNING and age > 2 * conf.HEARTBEAT_INTERVAL
        return format_html(
            '<span class="{}" style="{}" title="{}">{} ago</span>',
            "tasks-q-stale" if stale else "tasks-q-live",
            "color:#dc3545;font-weight:bold" if stale else "",
            worker.last_heartbeat_at.isoformat(),
            format_duration(max(age, 0.0)),
        )
