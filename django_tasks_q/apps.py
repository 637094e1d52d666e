from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class TasksQConfig(AppConfig):
    name = "django_tasks_q"
    verbose_name = "Tasks"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from django_tasks_q import checks  # noqa: F401 - registers the system checks

        # Registers every <app>/tasks.py, so a worker knows all tasks by name.
        autodiscover_modules("tasks")
