import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from django_tasks_q import registry
from django_tasks_q.models import Task
from tests.conftest import ROOT, run_burst_worker


def test_tasks_modules_of_installed_apps_are_discovered():
    names = registry.all_tasks()
    assert "tests.testapp.tasks.add" in names
    assert "testproject.demo.tasks.flaky_call" in names
    assert "custom.task.name" in names


def _write_package(root: Path, package: str, modules: dict[str, str]) -> None:
    (root / package).mkdir()
    (root / package / "__init__.py").write_text("")
    for module, source in modules.items():
        (root / package / f"{module}.py").write_text(textwrap.dedent(source))


def _in_fresh_django(script: str, *, path: Path | None = None) -> list[str]:
    """The lines ``script`` prints in a new process after ``django.setup()``: there, no module
    has been imported by another test."""
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "tests.settings"}
    if path is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(path), env.get("PYTHONPATH")]))
    completed = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()\n" + textwrap.dedent(script)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.splitlines()


def test_a_django_task_in_any_module_is_found_by_its_module_path_and_nothing_else_is():
    output = _in_fresh_django("""
        import sys
        from django_tasks_q import registry
        assert "tests.djangoapp.elsewhere" not in sys.modules
        task = registry.find("tests.djangoapp.elsewhere.double")
        print(task.name, task.func(21))
        names = ("os.system", "json.loads", "tests.djangoapp.elsewhere.not_a_task",
                 "no.such.module.task", "os..x")
        print([registry.find(name) for name in names])
    """)
    assert output == ["tests.djangoapp.elsewhere.double 42", "[None, None, None, None, None]"]


@pytest.mark.django_db(transaction=True)
def test_the_worker_runs_a_django_task_of_a_module_nothing_imported():
    # Nothing in the suite imports the module, so only the worker's lookup can find the task.
    assert "tests.djangoapp.elsewhere" not in sys.modules
    row = Task.objects.create(name="tests.djangoapp.elsewhere.double", args=[21])
    run_burst_worker(concurrency=1)
    row.refresh_from_db()
    assert (row.status, row.result) == ("SUCCESSFUL", 42)


def test_a_module_may_look_up_tasks_while_the_registry_imports_it(tmp_path):
    _write_package(tmp_path, "nightly_jobs", {
        "helpers": """
            from django_tasks_q.compat import task

            @task
            def tidy():
                pass
        """,
        "jobs": """
            from django_tasks_q.compat import task

            from django_tasks_q import registry

            helper = registry.find("nightly_jobs.helpers.tidy")

            @task
            def report():
                pass
        """,
    })  # fmt: skip
    output = _in_fresh_django(
        """
        from django_tasks_q import registry
        task = registry.find("nightly_jobs.jobs.report")
        print(task.name, task.func.__globals__["helper"].name)
        """,
        path=tmp_path,
    )
    assert output == ["nightly_jobs.jobs.report nightly_jobs.helpers.tidy"]


@pytest.fixture
def billing(tmp_path, monkeypatch):
    """A package whose ``invoices`` module imports a module that does not exist."""
    _write_package(tmp_path, "tq_billing", {
        "invoices": """
            import tq_billing.invoice  # the module is "invoices"
        """,
        "reports": """
            from tq_billing.invoices import send
        """,
    })  # fmt: skip
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    for module in [name for name in sys.modules if name.split(".")[0] == "tq_billing"]:
        del sys.modules[module]


@pytest.mark.usefixtures("billing")
@pytest.mark.parametrize("name", ["tq_billing.invoices.send", "tq_billing.reports.send"])
def test_a_module_that_fails_to_import_is_reported_not_taken_for_a_missing_one(caplog, name):
    with caplog.at_level(logging.WARNING, logger="django_tasks_q.worker"):
        assert registry.find(name) is None
    assert "could not be imported to find a task" in caplog.text
    assert "No module named 'tq_billing.invoice'" in caplog.text


def test_a_task_registered_after_a_failed_lookup_is_found(tmp_path):
    _write_package(tmp_path, "tq_late", {
        "jobs": """
            from django_tasks_q import background_task

            @background_task(name="tq_late.renamed")
            def later():
                pass
        """,
    })  # fmt: skip
    output = _in_fresh_django(
        """
        import importlib
        from django_tasks_q import registry
        print(registry.find("tq_late.renamed"), registry.find("tq_late.renamed"))
        importlib.import_module("tq_late.jobs")  # as the project's code does later
        print(registry.find("tq_late.renamed").func.__name__)
        """,
        path=tmp_path,
    )
    assert output == ["None None", "later"]


def test_did_you_mean_points_at_a_likely_typo_or_a_moved_task_only():
    assert "Did you mean 'tests.testapp.tasks.add'?" in registry.unknown_task_message(
        "tests.testapp.tasks.ad"
    )
    moved = registry.unknown_task_message("shop.old_module.returns_unserialisable")
    assert "Did you mean 'tests.testapp.tasks.returns_unserialisable'?" in moved
    # Same module, unrelated function: no hint.
    assert "Did you mean" not in registry.unknown_task_message(
        "tests.testapp.tasks.generate_invoice"
    )
