"""The task admin: what is queued, running, failed and why, and the actions an operator needs
to fix it. Registered in :mod:`django_tasks_q.admin`.

The task table can hold millions of rows, so nothing here counts or scans it whole: filters
offer the task names and queues this project knows instead of ``SELECT DISTINCT``, the
paginator stops counting at :data:`COUNT_LIMIT`, and an unfiltered list uses the planner's row
estimate.
"""

from __future__ import annotations

from urllib.parse import urlencode

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.core.exceptions import PermissionDenied
from django.core.paginator import Paginator
from django.db import connections, transaction
from django.db.models import Q, QuerySet, TextField
from django.db.models.functions import Cast
from django.http import (
    Http404,
    HttpRequest,
    HttpResponse,
    HttpResponseNotAllowed,
    HttpResponseRedirect,
)
from django.urls import path, reverse
from django.utils import timezone
from django.utils.functional import cached_property
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from django_tasks_q import actions, queue, registry
from django_tasks_q.admin.common import (
    ReadOnlyPages,
    admin_url,
    compact_time,
    pretty_json,
    status_badge,
)
from django_tasks_q.admin.workflow_graph import workflow_graph
from django_tasks_q.conf import settings as conf
from django_tasks_q.durations import format_duration
from django_tasks_q.exceptions import UnknownTaskError
from django_tasks_q.models import UNFINISHED_STATUSES, Task, TaskStatus
from django_tasks_q.queues import known_queues

# Filtered lists are counted up to this many rows; past it the admin says "10,000+" pages.
COUNT_LIMIT = 10_000


class LimitedCountPaginator(Paginator):
    """Counts filtered lists only up to COUNT_LIMIT + 1 rows, and uses the planner's estimate
    for the whole table: COUNT(*) over millions of rows would dominate every page load."""

    @cached_property
    def count(self) -> int:
        queryset = self.object_list
        if not queryset.query.where:
            estimate = _estimated_rows(queryset.db)
            if estimate > COUNT_LIMIT:
                return estimate
        return queryset.order_by()[: COUNT_LIMIT + 1].count()


def _estimated_rows(using: str) -> int:
    with connections[using].cursor() as cursor:
        cursor.execute(
            "SELECT reltuples::bigint FROM pg_class WHERE oid = %s::regclass", [Task._meta.db_table]
        )
        row = cursor.fetchone()
    return max(int(row[0]), 0) if row else 0


class ChoicesFromProjectFilter(admin.SimpleListFilter):
    """A filter whose choices come from the project (registered tasks, configured queues),
    never from SELECT DISTINCT over the task table."""

    field: str

    def queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> QuerySet[Task]:
        value = self.value()
        return queryset.filter(**{self.field: value}) if value else queryset


class TaskNameFilter(ChoicesFromProjectFilter):
    title = _("task name")
    parameter_name = field = "name"

    def lookups(self, request, model_admin):
        return [(name, name) for name in sorted(registry.all_tasks())]


class QueueFilter(ChoicesFromProjectFilter):
    title = _("queue")
    parameter_name = field = "queue"

    def lookups(self, request, model_admin):
        return [(name, name) for name in sorted(known_queues(conf.DATABASE))]


class HasErrorsFilter(admin.SimpleListFilter):
    title = _("errors")
    parameter_name = "has_errors"

    def lookups(self, request, model_admin):
        return [("yes", _("with errors")), ("no", _("without errors"))]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Task]) -> QuerySet[Task]:
        if self.value() == "yes":
            return queryset.exclude(errors=[])
        if self.value() == "no":
            return queryset.filter(errors=[])
        return queryset


class TaskAdmin(ReadOnlyPages):
    list_display = ("short_id", "name", "queue", "status_badge", "attempts_display",
                    "enqueued", "started", "duration", "worker_link")  # fmt: skip
    list_display_links = ("short_id", "name")
    list_filter = ("status", QueueFilter, TaskNameFilter, HasErrorsFilter, "schedule")
    list_select_related = False
    date_hierarchy = "enqueued_at"
    search_fields = ("name",)  # searched by get_search_results below; this shows the box
    search_help_text = _("Task id (yours or the database's), task name, or text in the arguments.")
    ordering = ("-id",)
    paginator = LimitedCountPaginator
    show_full_result_count = False
    actions = ["retry_now", "cancel_tasks", "enqueue_copy", "delete_selected"]
    fieldsets = [
        (
            None,
            {
                "fields": (
                    "id",
                    "name",
                    "status_badge",
                    "queue",
                    "priority",
                    "schedule_link",
                    "scheduled_for",
                    "expires_at",
                    "unique_key",
                    "chosen_id",
                )
            },
        ),
        (
            _("Timing"),
            {
                "fields": (
                    "enqueued_at",
                    "run_after",
                    "started_at",
                    "last_attempted_at",
                    "finished_at",
                    "queued_for",
                    "ran_for",
                )
            },
        ),
        (
            _("Attempts"),
            {
                "fields": (
                    "attempts_display",
                    "worker_link",
                    "lease_expires_at",
                    "cancel_requested_at",
                )
            },
        ),
        (_("Workflow"), {"fields": ("workflow_display",)}),
        (
            _("Flow control"),
            {
                "fields": (
                    "held_by",
                    "concurrency_limits",
                    "rate_limits",
                    "throttled_until",
                    "fair_key",
                )
            },
        ),
        (_("Arguments and result"), {"fields": ("args_pretty", "kwargs_pretty", "result_pretty")}),
        (_("Errors, one per failed attempt"), {"fields": ("errors_pretty",)}),
    ]
    readonly_fields = ("id", "name", "status_badge", "queue", "priority", "schedule_link",
                       "scheduled_for", "expires_at",
        "unique_key", "chosen_id", "enqueued_at", "run_after", "started_at",
                       "last_attempted_at", "finished_at", "queued_for", "ran_for",
                       "attempts_display", "worker_link", "lease_expires_at",
                       "cancel_requested_at", "args_pretty", "kwargs_pretty", "result_pretty",
                       "errors_pretty", "workflow_display", "held_by", "concurrency_limits",
                       "rate_limits", "throttled_until", "fair_key")  # fmt: skip

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False  # tasks are created by enqueueing them

    def get_fieldsets(self, request: HttpRequest, obj: Task | None = None) -> list:
        fieldsets = super().get_fieldsets(request, obj)
        left_out = set()
        if obj is None or obj.workflow_id is None:
            left_out.add(_("Workflow"))
        if obj is None or not (
            obj.held_by or obj.concurrency_limits or obj.rate_limits or obj.fair_key
        ):
            left_out.add(_("Flow control"))
        return [(name, options) for name, options in fieldsets if name not in left_out]

    def get_urls(self) -> list:
        cancel = self.admin_site.admin_view(self.cancel_workflow_view)
        return [
            path("<path:object_id>/cancel-workflow/", cancel,
                 name="django_tasks_q_task_cancel_workflow"),
            *super().get_urls(),
        ]  # fmt: skip

    def change_view(self, request, object_id, form_url="", extra_context=None):
        task = self.get_object(request, object_id)
        if (
            task is not None
            and task.workflow_id is not None
            and self.has_change_permission(request, task)
            and Task.objects.using(task._state.db)
            .filter(workflow_id=task.workflow_id, status__in=UNFINISHED_STATUSES)
            .exists()
        ):
            extra_context = {
                **(extra_context or {}),
                "workflow_cancel_url": reverse(
                    "admin:django_tasks_q_task_cancel_workflow", args=[task.pk]
                ),
            }
        return super().change_view(request, object_id, form_url, extra_context)

    def cancel_workflow_view(self, request: HttpRequest, object_id: str) -> HttpResponse:
        """Cancel every unfinished step of the task's workflow (POST, change permission)."""
        task = self.get_object(request, object_id)
        if task is None or task.workflow_id is None:
            raise Http404("No such task in a workflow.")
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        if not self.has_change_permission(request, task):
            raise PermissionDenied
        changed = queue.cancel_workflow(
            str(task.workflow_id), using=task._state.db, notify=conf.LISTEN_NOTIFY
        )
        cancelled = sum(status == TaskStatus.CANCELLED for status in changed.values())
        asked = len(changed) - cancelled
        message = ngettext(
            "%(n)d step of the workflow cancelled.", "%(n)d steps of the workflow cancelled.",
            cancelled,
        ) % {"n": cancelled}  # fmt: skip
        if asked:
            message += " " + ngettext(
                "%(n)d running step was asked to stop.",
                "%(n)d running steps were asked to stop.",
                asked,
            ) % {"n": asked}
        self.message_user(request, message, messages.SUCCESS if changed else messages.WARNING)
        return HttpResponseRedirect(reverse("admin:django_tasks_q_task_change", args=[task.pk]))

    def get_queryset(self, request: HttpRequest) -> QuerySet[Task]:
        # The list does not show arguments, results or tracebacks: do not fetch them.
        queryset = super().get_queryset(request)
        if request.resolver_match and request.resolver_match.url_name.endswith("changelist"):
            queryset = queryset.defer("args", "kwargs", "result", "errors")
        return queryset

    def get_changelist_instance(self, request: HttpRequest) -> ChangeList:
        changelist = super().get_changelist_instance(request)
        if changelist.query:
            # A text search scans the table anyway; do not scan it twice more for the dates.
            changelist.date_hierarchy = None
        elif changelist.result_count <= COUNT_LIMIT:
            changelist.queryset = changelist.queryset.few_rows()
        return changelist

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Task], search_term: str
    ) -> tuple[QuerySet[Task], bool]:
        term = search_term.strip()
        if not term:
            return queryset, False
        if term.startswith("#") and term[1:].isdigit():
            return queryset.filter(pk=int(term[1:])), False  # an id: one index lookup
        match = Q(name__icontains=term) | Q(args_text__icontains=term)
        match |= Q(kwargs_text__icontains=term)
        if term.isdigit():
            match |= Q(pk=int(term))
        else:
            match |= Q(chosen_id=term)
        queryset = queryset.annotate(
            args_text=Cast("args", TextField()), kwargs_text=Cast("kwargs", TextField())
        )
        return queryset.filter(match), False

    # -- columns and fields ---------------------------------------------------------------

    @admin.display(description=_("id"), ordering="id")
    def short_id(self, task: Task) -> str:
        return f"#{task.pk}"

    @admin.display(description=_("status"), ordering="status")
    def status_badge(self, task: Task) -> str:
        return status_badge(task.status)

    @admin.display(description=_("enqueued"), ordering="enqueued_at")
    def enqueued(self, task: Task) -> str:
        return compact_time(task.enqueued_at)

    @admin.display(description=_("started"), ordering="started_at")
    def started(self, task: Task) -> str:
        return compact_time(task.started_at)

    @admin.display(description=_("attempts"))
    def attempts_display(self, task: Task) -> str:
        return f"{task.attempts} / {task.max_attempts}"

    @admin.display(description=_("duration"))
    def duration(self, task: Task) -> str:
        if task.last_attempted_at is None:
            return "—"
        end = task.finished_at or (timezone.now() if task.status == TaskStatus.RUNNING else None)
        if end is None:
            return "—"
        return format_duration((end - task.last_attempted_at).total_seconds())

    @admin.display(description=_("waited before its first attempt"))
    def queued_for(self, task: Task) -> str:
        if task.started_at is None:
            return "—"
        # Enqueued to first start: includes a countdown, if the task had one.
        return format_duration(max((task.started_at - task.enqueued_at).total_seconds(), 0.0))

    @admin.display(description=_("last attempt ran for"))
    def ran_for(self, task: Task) -> str:
        return self.duration(task)

    @admin.display(description=_("worker"), ordering="worker_id")
    def worker_link(self, task: Task) -> str:
        if not task.worker_id:
            return "—"
        url = admin_url("django_tasks_q_worker_change", task.worker_id)
        return format_html('<a href="{}">{}</a>', url, task.worker_id) if url else task.worker_id

    @admin.display(description=_("schedule"))
    def schedule_link(self, task: Task) -> str:
        if task.schedule_id is None:
            return "—"
        url = admin_url("django_tasks_q_schedule_change", task.schedule_id)
        return format_html('<a href="{}">{}</a>', url, task.schedule) if url else str(task.schedule)

    @admin.display(description=_("steps"))
    def workflow_display(self, task: Task) -> str:
        if task.workflow_id is None:
            return "—"
        listed = reverse("admin:django_tasks_q_task_changelist")
        query = urlencode({"workflow_id__exact": str(task.workflow_id)})
        return format_html(
            '<div class="tasks-q-graph-wrap">{}</div><p><a href="{}?{}">{}</a> · {}</p>',
            workflow_graph(task),
            listed,
            query,
            _("Every step in the task list"),
            _("workflow %(id)s") % {"id": task.workflow_id},
        )

    @admin.display(description=_("args"))
    def args_pretty(self, task: Task) -> str:
        return pretty_json(task.args)

    @admin.display(description=_("kwargs"))
    def kwargs_pretty(self, task: Task) -> str:
        return pretty_json(task.kwargs)

    @admin.display(description=_("result"))
    def result_pretty(self, task: Task) -> str:
        return pretty_json(task.result) if task.result is not None else "—"

    @admin.display(description=_("errors"))
    def errors_pretty(self, task: Task) -> str:
        if not task.errors:
            return "—"
        return format_html_join(
            "",
            '<div class="tasks-q-error">'
            "<strong>{} {}: {}</strong><br>"
            '<span class="tasks-q-error-where">{}</span>'
            "<details open><summary>{}</summary><pre>{}</pre></details></div>",
            (
                (
                    _("Attempt %(n)s") % {"n": error.get("attempt", "?")},
                    error.get("type", ""),
                    error.get("message", ""),
                    " · ".join(
                        str(part) for part in (error.get("worker_id"), error.get("at")) if part
                    ),
                    _("Traceback"),
                    error.get("traceback", ""),
                )
                for error in task.errors
            ),
        )

    # -- actions --------------------------------------------------------------------------

    @admin.action(description=_("Retry now (failed or cancelled tasks)"), permissions=["change"])
    def retry_now(self, request: HttpRequest, selected: QuerySet[Task]) -> None:
        done = actions.retry(selected.values_list("id", flat=True), using=selected.db)
        retried = len(done.retried)
        # The tasks left out for their key are reported below, not as "left alone".
        self._report(request, retried, len(selected) - len(done.conflicts),
                     ngettext("%(n)d task will run again now.",
                              "%(n)d tasks will run again now.", retried),
                     _("only failed or cancelled tasks can be retried, and a workflow step "
                       "cancelled because a dependency did not succeed comes back when that "
                       "dependency is retried"))  # fmt: skip
        if done.conflicts:
            listed = ", ".join(
                f"{name} #{task_id} (key {key!r})" for name, task_id, key in done.conflicts
            )
            self.message_user(
                request,
                ngettext(
                    "%(n)d task was not retried because another task with the same unique key "
                    "is waiting or running: %(tasks)s.",
                    "%(n)d tasks were not retried because another task with the same unique key "
                    "is waiting or running: %(tasks)s.",
                    len(done.conflicts),
                )
                % {"n": len(done.conflicts), "tasks": listed},
                messages.WARNING,
            )

    @admin.action(description=_("Cancel (waiting, ready or running tasks)"), permissions=["change"])
    def cancel_tasks(self, request: HttpRequest, selected: QuerySet[Task]) -> None:
        done = actions.cancel(selected.values_list("id", flat=True), using=selected.db)
        cancelled, asked = len(done.cancelled), len(done.asked_to_stop)
        message = ngettext("%(n)d task cancelled.", "%(n)d tasks cancelled.", cancelled) % {
            "n": cancelled
        }
        if asked:
            message += " " + ngettext(
                "%(n)d running task was asked to stop; it ends cancelled when it does.",
                "%(n)d running tasks were asked to stop; they end cancelled when they do.",
                asked,
            ) % {"n": asked}
        self._report(request, done.changed, len(selected), message,
                     _("only unfinished tasks can be cancelled"), formatted=True)  # fmt: skip

    @admin.action(description=_("Enqueue a copy"), permissions=["change"])
    def enqueue_copy(self, request: HttpRequest, selected: QuerySet[Task]) -> None:
        copies, unknown = 0, set()
        with transaction.atomic(using=selected.db):
            for row in selected:
                try:
                    task = registry.get(row.name)
                except UnknownTaskError:
                    unknown.add(row.name)
                    continue
                task.using(queue_name=row.queue, priority=row.priority).enqueue(
                    *row.args, **row.kwargs
                )
                copies += 1
        self.message_user(
            request,
            ngettext("%(n)d copy enqueued.", "%(n)d copies enqueued.", copies) % {"n": copies},
            messages.SUCCESS if copies else messages.WARNING,
        )
        if unknown:
            self.message_user(
                request,
                _("Not copied, no task is registered under these names: %(names)s.")
                % {"names": ", ".join(sorted(unknown))},
                messages.WARNING,
            )

    def _report(self, request: HttpRequest, changed: int, selected: int, message: str,
                skipped_reason: str, *, formatted: bool = False) -> None:  # fmt: skip
        text = message if formatted else message % {"n": changed}
        if changed < selected:
            text += " " + _("%(n)d left alone: %(reason)s.") % {
                "n": selected - changed,
                "reason": skipped_reason,
            }
        self.message_user(request, text, messages.SUCCESS if changed else messages.WARNING)
