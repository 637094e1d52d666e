from django.contrib import admin

from django_tasks_q.models import Task, Worker


@admin.register(Task)
class TaskAdmin(admin.ModelAdmin):
    list_display = ("id", "name", "queue", "status", "attempts", "max_attempts", "enqueued_at",
                    "started_at", "finished_at", "worker_id")  # fmt: skip
    list_filter = ("status", "queue")
    search_fields = ("name",)
    show_full_result_count = False
    readonly_fields = [field.name for field in Task._meta.fields]

    def has_add_permission(self, request) -> bool:
        # Tasks are created by enqueueing them, never by hand.
        return False


@admin.register(Worker)
class WorkerAdmin(admin.ModelAdmin):
    list_display = ("id", "hostname", "pid", "state", "concurrency", "started_at",
                    "last_heartbeat_at", "tasks_succeeded", "tasks_failed")  # fmt: skip
    list_filter = ("state", "hostname")
    readonly_fields = [field.name for field in Worker._meta.fields]

    def has_add_permission(self, request) -> bool:
        return False
