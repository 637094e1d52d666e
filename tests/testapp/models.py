from django.db import models


class Execution(models.Model):
    """One row per time a test task body ran: lets tests count executions exactly."""

    key = models.CharField(max_length=100)
    attempt = models.IntegerField(default=0)
    worker = models.CharField(max_length=100, blank=True, default="")


class Note(models.Model):
    """Data a view would write in the same transaction as its task."""

    text = models.CharField(max_length=100)
