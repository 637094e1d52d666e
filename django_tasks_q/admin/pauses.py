"""Paused queues and task names in the admin: adding one pauses it, deleting one resumes it
(``django_tasks_q.pausing``), under the model's add and delete permissions."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.db.models import QuerySet
from django.http import HttpRequest
from django.utils.translation import gettext_lazy as _

from django_tasks_q import pausing
from django_tasks_q.models import Pause


class PauseForm(forms.ModelForm):
    class Meta:
        model = Pause
        fields = ("queue", "task_name", "reason")
        help_texts = {
            "queue": _("Pause a queue: none of its tasks starts until it is resumed."),
            "task_name": _("Or pause a task, by its registered name, in every queue."),
        }

    def clean(self) -> dict:
        data = super().clean()
        if bool(data.get("queue")) == bool(data.get("task_name")):
            raise forms.ValidationError(_("Give either a queue or a task name."))
        return data


class PauseAdmin(admin.ModelAdmin):
    form = PauseForm
    list_display = ("__str__", "paused_at", "reason")
    ordering = ("paused_at",)
    actions = ["resume_selected"]

    class Media:
        css = {"all": ["django_tasks_q/admin.css"]}

    def has_change_permission(self, request: HttpRequest, obj: Pause | None = None) -> bool:
        return False  # a pause is added (paused) or deleted (resumed), never edited

    def save_model(self, request: HttpRequest, obj: Pause, form: forms.Form, change: bool) -> None:
        done = pausing.pause(
            obj.queue or None, task=obj.task_name or None, reason=obj.reason, using=obj._state.db
        )
        saved = Pause.objects.get(queue=obj.queue, task_name=obj.task_name)
        obj.pk, obj.paused_at = saved.pk, saved.paused_at
        self.message_user(
            request,
            _("Paused %(what)s: %(n)d waiting task(s) held.") % {"what": obj, "n": done.tasks},
            messages.SUCCESS,
        )

    def delete_model(self, request: HttpRequest, obj: Pause) -> None:
        self._resume(request, [obj])

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Pause]) -> None:
        # Django's "delete selected" comes here too: deleting a pause resumes it.
        self._resume(request, list(queryset))

    @admin.action(description=_("Resume the selected queues and tasks"), permissions=["delete"])
    def resume_selected(self, request: HttpRequest, queryset: QuerySet[Pause]) -> None:
        self._resume(request, list(queryset))

    def _resume(self, request: HttpRequest, pauses: list[Pause]) -> None:
        for pause in pauses:
            done = pausing.resume(pause.queue or None, task=pause.task_name or None)
            self.message_user(
                request,
                _("Resumed %(what)s: %(n)d task(s) ready again.")
                % {"what": pause, "n": done.tasks},
                messages.SUCCESS,
            )
