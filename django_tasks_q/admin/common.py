"""Pieces the task, worker and schedule admin pages share."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from django.contrib import admin
from django.http import HttpResponse
from django.urls import NoReverseMatch, reverse
from django.utils import timezone
from django.utils.html import format_html

from django_tasks_q.models import TaskStatus


def status_badge(status: str) -> str:
    label = TaskStatus(status).label if status in TaskStatus.values else status
    return format_html(
        '<span class="tasks-q-status tasks-q-status-{}">{}</span>', str(status).lower(), label
    )


def compact_time(moment: datetime | None) -> str:
    """A list column's time: the time of day for today, the date too otherwise; the full
    timestamp is in the title (hover)."""
    if moment is None:
        return "—"
    local = timezone.localtime(moment)
    shown = local.strftime("%H:%M:%S" if local.date() == timezone.localdate() else "%b %d, %H:%M")
    return format_html('<span title="{}">{}</span>', local.isoformat(), shown)


def pretty_json(value: Any) -> str:
    return format_html(
        '<pre class="tasks-q-json">{}</pre>',
        json.dumps(value, indent=2, ensure_ascii=False, sort_keys=True),
    )


class ReadOnlyPages(admin.ModelAdmin):
    """Detail pages show, never edit: the change permission is for the actions."""

    class Media:
        css = {"all": ["django_tasks_q/admin.css"]}

    def change_view(self, request, object_id, form_url="", extra_context=None) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "show_save": False,
            "show_save_and_continue": False,
            "show_save_and_add_another": False,
        }
        return super().change_view(request, object_id, form_url, extra_context)


def admin_url(name: str, pk: object) -> str | None:
    try:
        return reverse(f"admin:{name}", args=[pk])
    except NoReverseMatch:
        return None
