"""The schedule admin: periodic tasks, their next runs, and enable / disable / run now."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import OuterRef, QuerySet, Subquery
from django.http import HttpRequest
from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.translation import gettext_lazy as _
from django.utils.translation import ngettext

from django_tasks_q import queue
from django_tasks_q.beat import run_now
from django_tasks_q.conf import settings as conf
from django_tasks_q.models import Schedule, Task
from django_tasks_q.schedules import ScheduleError, get_zone, upcoming


class ScheduleForm(forms.ModelForm):
    args = forms.JSONField(
        required=False,
        initial=list,
        error_messages={
            "invalid": _(
                "Enter JSON: a list in square brackets, strings in double quotes, e.g. "
                '[42, "daily"]. Leave empty for no arguments.'
            )
        },
    )
    kwargs = forms.JSONField(
        required=False,
        initial=dict,
        error_messages={
            "invalid": _(
                'Enter JSON: an object with double-quoted keys, e.g. {"report": "daily", '
                '"limit": 10}. Leave empty for none.'
            )
        },
    )

    class Meta:
        model = Schedule
        fields = ("name", "task", "enabled", "cron", "interval", "run_at", "timezone",
                  "catch_up", "args", "kwargs", "queue", "priority", "expires_after")  # fmt: skip

    def clean_args(self):
        value = self.cleaned_data.get("args")
        return [] if value is None else value

    def clean_kwargs(self):
        value = self.cleaned_data.get("kwargs")
        return {} if value is None else value

    def clean_run_at(self):
        value = self.cleaned_data.get("run_at")
        in_the_past = value is not None and value <= queue.database_now(conf.DATABASE)
        if in_the_past and "run_at" in self.changed_data:
            raise forms.ValidationError(
                _("This time has passed; pick a time in the future (or use Run now).")
            )
        return value


class ScheduleAdmin(admin.ModelAdmin):
    form = ScheduleForm
    list_display = ("name", "task", "kind", "expression", "timezone", "enabled", "next_run_at",
                    "last_run_at", "last_task", "source")  # fmt: skip
    list_filter = ("enabled", "source", "catch_up")
    search_fields = ("name", "task")
    actions = ["enable_schedules", "disable_schedules", "run_schedules_now"]
    readonly_fields = ("source", "upcoming_runs", "next_run_at", "last_run_at", "run_count",
                       "last_task")  # fmt: skip
    fieldsets = [
        (None, {"fields": ("name", "task", "enabled", "source")}),
        (
            _("When"),
            {
                "fields": ("cron", "interval", "run_at", "timezone", "catch_up"),
                "description": _(
                    "Fill in one of: a cron expression (read in the time zone), an interval, "
                    "or a one-off time. Catch-up decides what happens to ticks missed while no "
                    "beat was running."
                ),
            },
        ),
        (_("Task options"), {"fields": ("args", "kwargs", "queue", "priority", "expires_after")}),
        (
            _("Runs"),
            {"fields": ("upcoming_runs", "next_run_at", "last_run_at", "run_count", "last_task")},
        ),
    ]

    def get_queryset(self, request: HttpRequest) -> QuerySet[Schedule]:
        latest = Task.objects.filter(schedule=OuterRef("pk")).order_by("-scheduled_for")
        return (
            super()
            .get_queryset(request)
            .annotate(
                last_task_id=Subquery(latest.values("pk")[:1]),
                last_task_status=Subquery(latest.values("status")[:1]),
            )
        )

    def get_readonly_fields(self, request: HttpRequest, obj: Schedule | None = None):
        fields = super().get_readonly_fields(request, obj)
        if obj is not None and obj.is_code_owned:
            # The declaration in code owns these; the next beat start would undo an edit.
            return ("name", *Schedule.CODE_FIELDS, *fields)
        return fields

    def get_fieldsets(self, request: HttpRequest, obj: Schedule | None = None):
        fieldsets = super().get_fieldsets(request, obj)
        if obj is not None and obj.is_code_owned:
            name, options = fieldsets[0]
            description = _(
                "Declared in code (TASKS_Q['SCHEDULES'] or @background_task(schedule=...)) and "
                "synced by beat when it starts: change it there. Here you can enable or disable "
                "it, or run it now."
            )
            fieldsets = [(name, {**options, "description": description}), *fieldsets[1:]]
        return fieldsets

    @admin.display(description=_("kind"))
    def kind(self, obj: Schedule) -> str:
        return obj.kind

    @admin.display(description=_("expression"))
    def expression(self, obj: Schedule) -> str:
        if obj.cron:
            return obj.cron
        if obj.interval is not None:
            return f"every {obj.interval}"
        return f"at {obj.run_at.isoformat()}" if obj.run_at else "—"

    @admin.display(description=_("last task"))
    def last_task(self, obj: Schedule) -> str:
        task_id = getattr(obj, "last_task_id", None)
        if task_id is None:
            return "—"
        url = reverse("admin:django_tasks_q_task_change", args=[task_id])
        return format_html('<a href="{}">#{} {}</a>', url, task_id, obj.last_task_status)

    @admin.display(description=_("next 5 runs"))
    def upcoming_runs(self, obj: Schedule) -> str:
        if obj is None or obj.pk is None:
            return _("Shown once the schedule is saved.")
        if not obj.enabled:
            return _("None: the schedule is disabled.")
        try:
            timing = obj.timing()
        except ScheduleError as exc:
            return str(exc)
        runs = list(upcoming(timing, obj.next_run_at, 5))
        if not runs:
            return _("None left.")
        zone = get_zone(obj.timezone)
        rows = (
            (f"{run.astimezone(zone):%Y-%m-%d %H:%M:%S %Z}", f"{run:%Y-%m-%d %H:%M:%S}")
            for run in runs
        )
        return format_html(
            '<ul style="margin: 0; padding: 0">{}</ul>',
            format_html_join("", '<li style="list-style: none">{} ({} UTC)</li>', rows),
        )

    @admin.action(permissions=["change"], description=_("Enable selected schedules"))
    def enable_schedules(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        changed = _set_enabled(queryset, True)
        self.message_user(
            request,
            ngettext("%d schedule enabled.", "%d schedules enabled.", changed) % changed,
        )

    @admin.action(permissions=["change"], description=_("Disable selected schedules"))
    def disable_schedules(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        changed = _set_enabled(queryset, False)
        self.message_user(
            request,
            ngettext("%d schedule disabled.", "%d schedules disabled.", changed) % changed,
        )

    @admin.action(permissions=["change"], description=_("Run selected schedules now"))
    def run_schedules_now(self, request: HttpRequest, queryset: QuerySet[Schedule]) -> None:
        enqueued = 0
        for schedule in queryset:
            try:
                run_now(schedule)
            except Exception as exc:
                self.message_user(
                    request, f"{schedule.name}: not enqueued: {exc}", level=messages.ERROR
                )
            else:
                enqueued += 1
        if enqueued:
            self.message_user(
                request,
                ngettext("%d task enqueued.", "%d tasks enqueued.", enqueued) % enqueued,
            )


def _set_enabled(queryset: QuerySet[Schedule], enabled: bool) -> int:
    """Through save(), so next_run_at is recomputed and beats are woken. Returns how many
    schedules changed."""
    changed = 0
    for schedule in queryset.filter(enabled=not enabled):
        schedule.enabled = enabled
        schedule.save(update_fields=["enabled"])
        changed += 1
    return changed
