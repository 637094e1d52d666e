"""Queries over the task table that must stay fast with millions of rows."""

from __future__ import annotations

from datetime import datetime, tzinfo
from typing import Any

from django.db import models
from django.utils import timezone

_INDEXED_TIMES = frozenset({"enqueued_at"})


class TaskQuerySet(models.QuerySet):
    # Set by few_rows(): the caller knows the filter matches few rows (the admin counted them).
    _few_rows = False

    def few_rows(self) -> TaskQuerySet:
        """This queryset matches at most a few thousand rows: date bounds and periods are then
        computed from its rows, which is cheaper than walking an index whose order does not
        match the filter (the planner's choice for MIN() over a selective filter)."""
        clone = self._chain()
        clone._few_rows = True
        return clone

    def _clone(self) -> TaskQuerySet:
        clone = super()._clone()
        clone._few_rows = self._few_rows
        return clone

    def aggregate(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        field = _single_field_bounds(args, kwargs) if self._few_rows else None
        if field is None:
            return super().aggregate(*args, **kwargs)
        values = [v for v in self.order_by().values_list(field, flat=True) if v is not None]
        return {
            alias: (min if isinstance(expression, models.Min) else max)(values, default=None)
            for alias, expression in kwargs.items()
        }

    def datetimes(
        self, field_name: str, kind: str, order: str = "ASC", tzinfo: tzinfo | None = None
    ) -> Any:
        """The years, months or days that hold tasks, like ``QuerySet.datetimes()``.

        For ``enqueued_at`` (indexed), it reads the first and last value from the index and
        then probes each period in between with one ``EXISTS``, instead of truncating every
        row as the generic query does: the admin's date hierarchy costs a few index lookups
        instead of a scan of the whole table.
        """
        if kind not in ("year", "month", "day"):
            return super().datetimes(field_name, kind, order, tzinfo)
        zone = tzinfo or timezone.get_current_timezone()
        if self._few_rows:
            starts = {
                _period_start(value.astimezone(zone), kind)
                for value in self.order_by().values_list(field_name, flat=True)
                if value is not None
            }
            return sorted(starts, reverse=order != "ASC")
        if field_name not in _INDEXED_TIMES:
            return super().datetimes(field_name, kind, order, tzinfo)
        bounds = self.aggregate(first=models.Min(field_name), last=models.Max(field_name))
        if bounds["first"] is None:
            return []
        last = bounds["last"].astimezone(zone)
        periods = []
        start = _period_start(bounds["first"].astimezone(zone), kind)
        while start <= last:
            end = _next_period(start, kind)
            if self.filter(**{f"{field_name}__gte": start, f"{field_name}__lt": end}).exists():
                periods.append(start)
            start = end
        return periods if order == "ASC" else periods[::-1]


def _single_field_bounds(args: tuple, kwargs: dict[str, Any]) -> str | None:
    """The field of ``aggregate(a=Min(field), b=Max(field))``, or None for anything else."""
    if args or not kwargs:
        return None
    fields = set()
    for expression in kwargs.values():
        if type(expression) not in (models.Min, models.Max) or expression.filter is not None:
            return None
        source = expression.get_source_expressions()[0]
        if not isinstance(source, models.F):
            return None
        fields.add(source.name)
    return fields.pop() if len(fields) == 1 else None


def _period_start(moment: datetime, kind: str) -> datetime:
    month = moment.month if kind != "year" else 1
    day = moment.day if kind == "day" else 1
    return datetime(moment.year, month, day, tzinfo=moment.tzinfo)


def _next_period(start: datetime, kind: str) -> datetime:
    # Wall-clock arithmetic in the zone: a period is a calendar day, month or year.
    year, month = start.year, start.month
    if kind == "year":
        return datetime(year + 1, 1, 1, tzinfo=start.tzinfo)
    if kind == "month":
        return datetime(year + (month == 12), month % 12 + 1, 1, tzinfo=start.tzinfo)
    ordinal = start.date().toordinal() + 1
    following = datetime.fromordinal(ordinal)
    return following.replace(tzinfo=start.tzinfo)
