from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.views.decorators.http import require_POST

from django_tasks_q.models import Task
from testproject.demo import tasks

BUTTONS = {
    "quick": ("Quick: add(2, 3)", lambda: tasks.add.delay(2, 3)),
    "slow": ("Slow: a 5 second report", lambda: tasks.slow_report.delay(5)),
    "flaky": ("Flaky: fails twice, then succeeds", lambda: tasks.flaky_call.delay(2)),
    "failing": ("Failing: fails on every attempt", lambda: tasks.always_fails.delay()),
}


def latest_tasks(limit: int = 25) -> list[dict]:
    rows = Task.objects.select_related("schedule").order_by("-id")[:limit]
    return [
        {
            "id": row.id,
            "name": row.name.rsplit(".", 1)[-1],
            "status": row.status,
            "attempts": f"{row.attempts}/{row.max_attempts}",
            "result": row.result,
            # A task that succeeded on a retry shows its result, not the error it got past.
            "error": row.last_error["message"]
            if row.last_error and row.status != "SUCCESSFUL"
            else "",
            "enqueued_at": row.enqueued_at.strftime("%H:%M:%S"),
            # Tasks a beat enqueued name their schedule: the demo declares one in settings.
            "schedule": row.schedule.name if row.schedule else "",
        }
        for row in rows
    ]


def index(request: HttpRequest) -> HttpResponse:
    context = {"buttons": [(key, label) for key, (label, _) in BUTTONS.items()]}
    context["tasks"] = latest_tasks()
    return render(request, "demo/index.html", context)


@require_POST
def enqueue(request: HttpRequest, kind: str) -> HttpResponse:
    if kind in BUTTONS:
        BUTTONS[kind][1]()
    return redirect("demo-index")


def task_list(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"tasks": latest_tasks()})
