"""Admin registrations: tasks, workers, schedules, pauses (and the dashboard, in the app
index)."""

from django.contrib import admin

from django_tasks_q.admin.dashboard import DashboardAdmin
from django_tasks_q.admin.pauses import PauseAdmin
from django_tasks_q.admin.schedules import ScheduleAdmin
from django_tasks_q.admin.tasks import TaskAdmin
from django_tasks_q.admin.workers import WorkerAdmin
from django_tasks_q.models import Dashboard, Pause, Schedule, Task, Worker

admin.site.register(Task, TaskAdmin)
admin.site.register(Worker, WorkerAdmin)
admin.site.register(Schedule, ScheduleAdmin)
admin.site.register(Dashboard, DashboardAdmin)
admin.site.register(Pause, PauseAdmin)
