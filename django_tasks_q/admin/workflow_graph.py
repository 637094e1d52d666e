"""The task page's workflow graph: an SVG drawn on the server, like the dashboard's charts.

One box per step, in columns by depth (a step is one column right of its deepest
dependency), linked to the step's page. A column with more steps than fit is drawn as one box
per task name, with the count of each status, linked to the task list filtered to them, so a
chord of 10,000 headers stays one readable box.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from urllib.parse import urlencode

from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

from django_tasks_q.admin.common import admin_url
from django_tasks_q.models import Dependency, Task, TaskStatus

# More steps than this in one column are drawn grouped by task name. Only ids, names and
# statuses are read, never arguments or results.
MAX_BOXES_PER_COLUMN = 8
BOX_WIDTH, BOX_HEIGHT, COLUMN_GAP, ROW_GAP, MARGIN = 190, 40, 50, 14, 4
# The worst status of a group of steps is the one its box shows.
_SEVERITY = [TaskStatus.FAILED, TaskStatus.RUNNING, TaskStatus.READY, TaskStatus.WAITING,
             TaskStatus.CANCELLED, TaskStatus.SUCCESSFUL]  # fmt: skip


@dataclass
class Box:
    name: str
    ids: list[int] = field(default_factory=list)
    statuses: Counter = field(default_factory=Counter)
    column: int = 0
    row: int = 0

    @property
    def status(self) -> str:
        return next(s for s in _SEVERITY if self.statuses[s]) if self.statuses else ""

    @property
    def x(self) -> int:
        return MARGIN + self.column * (BOX_WIDTH + COLUMN_GAP)

    @property
    def y(self) -> int:
        return MARGIN + self.row * (BOX_HEIGHT + ROW_GAP)


def layout(workflow_id: str, using: str) -> tuple[list[Box], set[tuple[int, int]], dict[int, int]]:
    """The boxes of a workflow, the edges between them (indexes into the boxes), and each
    step's box."""
    steps = list(
        Task.objects.using(using)
        .filter(workflow_id=workflow_id)
        .order_by("id")
        .values_list("id", "name", "status")
    )
    ids = [step_id for step_id, _, _ in steps]
    parents: dict[int, list[int]] = defaultdict(list)
    for child, parent in (
        Dependency.objects.using(using)
        .filter(task_id__in=ids)
        .values_list("task_id", "depends_on_id")
    ):
        parents[child].append(parent)
    # Ids follow the order steps were written, dependencies first: one pass gives depths.
    depth: dict[int, int] = {}
    for step_id in ids:
        depth[step_id] = max((depth[p] + 1 for p in parents[step_id] if p in depth), default=0)
    columns: dict[int, list[tuple[int, str, str]]] = defaultdict(list)
    for step in steps:
        columns[depth[step[0]]].append(step)
    boxes: list[Box] = []
    box_of: dict[int, int] = {}
    for column, members in sorted(columns.items()):
        grouped = len(members) > MAX_BOXES_PER_COLUMN
        index_of: dict[object, int] = {}
        for step_id, name, status in members:
            key = name if grouped else step_id
            if key not in index_of:
                index_of[key] = len(boxes)
                boxes.append(Box(name=name, column=column, row=len(index_of) - 1))
            box = boxes[index_of[key]]
            box.ids.append(step_id)
            box.statuses[status] += 1
            box_of[step_id] = index_of[key]
    edges = {
        (box_of[parent], box_of[child])
        for child, listed in parents.items()
        for parent in listed
        if parent in box_of and child in box_of
    }
    return boxes, edges, box_of


def workflow_graph(task: Task) -> SafeString:
    """The SVG of ``task``'s workflow, the task itself outlined."""
    boxes, edges, box_of = layout(str(task.workflow_id), task._state.db or "default")
    if not boxes:
        return SafeString("")
    width = MARGIN * 2 + (max(b.column for b in boxes) + 1) * (BOX_WIDTH + COLUMN_GAP) - COLUMN_GAP
    height = MARGIN * 2 + (max(b.row for b in boxes) + 1) * (BOX_HEIGHT + ROW_GAP) - ROW_GAP
    lines = format_html_join(
        "",
        '<path class="tasks-q-graph-edge" d="M{},{} C{},{} {},{} {},{}"/>',
        (_curve(boxes[parent], boxes[child]) for parent, child in sorted(edges)),
    )
    current = box_of.get(task.pk)
    nodes = format_html_join(
        "",
        '<a href="{}"><title>{}</title>'
        '<rect class="tasks-q-graph-node tasks-q-graph-{}{}" x="{}" y="{}" width="{}" '
        'height="{}" rx="6"/>'
        '<text x="{}" y="{}" class="tasks-q-graph-name">{}</text>'
        '<text x="{}" y="{}" class="tasks-q-graph-detail">{}</text></a>',
        (
            (
                _link(task, box),
                _title(box),
                box.status.lower(),
                " tasks-q-graph-current" if index == current else "",
                box.x,
                box.y,
                BOX_WIDTH,
                BOX_HEIGHT,
                box.x + 8,
                box.y + 16,
                _short(box),
                box.x + 8,
                box.y + 32,
                _detail(box),
            )
            for index, box in enumerate(boxes)
        ),
    )
    return format_html(
        '<svg class="tasks-q-graph" role="img" aria-label="{}" width="{}" height="{}" '
        'viewBox="0 0 {} {}" xmlns="http://www.w3.org/2000/svg">{}{}</svg>',
        f"Workflow of {len(box_of)} steps",
        width, height, width, height, lines, nodes,
    )  # fmt: skip


def _curve(parent: Box, child: Box) -> tuple[int, ...]:
    x1, y1 = parent.x + BOX_WIDTH, parent.y + BOX_HEIGHT // 2
    x2, y2 = child.x, child.y + BOX_HEIGHT // 2
    middle = (x1 + x2) // 2
    return (x1, y1, middle, y1, middle, y2, x2, y2)


def _short(box: Box) -> str:
    name = box.name.rsplit(".", 1)[-1]
    label = f"{len(box.ids):,} \N{MULTIPLICATION SIGN} {name}" if len(box.ids) > 1 else name
    return label if len(label) <= 26 else label[:25] + "…"


def _detail(box: Box) -> str:
    if len(box.ids) == 1:
        return f"#{box.ids[0]} · {TaskStatus(box.status).label}"
    return ", ".join(
        f"{box.statuses[s]:,} {TaskStatus(s).label.lower()}" for s in _SEVERITY if box.statuses[s]
    )


def _title(box: Box) -> str:
    return f"{box.name}: {_detail(box)}"


def _link(task: Task, box: Box) -> str:
    if len(box.ids) == 1:
        return admin_url("django_tasks_q_task_change", box.ids[0]) or ""
    query = urlencode({"workflow_id__exact": str(task.workflow_id), "name": box.name})
    return f"{reverse('admin:django_tasks_q_task_changelist')}?{query}"
