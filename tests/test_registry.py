from django_tasks_q import registry


def test_tasks_modules_of_installed_apps_are_discovered():
    names = registry.all_tasks()
    assert "tests.testapp.tasks.add" in names
    assert "testproject.demo.tasks.flaky_call" in names
    assert "custom.task.name" in names


def test_a_django_task_in_any_module_is_found_by_its_module_path_and_nothing_else_is():
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = (
        "import django, sys; django.setup(); from django_tasks_q import registry; "
        "assert 'tests.djangoapp.elsewhere' not in sys.modules; "
        "task = registry.find('tests.djangoapp.elsewhere.double'); "
        "print(task.name, task.func(21)); "
        "print([registry.find(n) for n in ('os.system', 'json.loads', "
        "'tests.djangoapp.elsewhere.not_a_task', 'no.such.module.task', 'os..x')])"
    )
    output = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, check=True,
        env={**__import__("os").environ, "DJANGO_SETTINGS_MODULE": "tests.settings"},
    ).stdout.splitlines()  # fmt: skip
    assert output == ["tests.djangoapp.elsewhere.double 42", "[None, None, None, None, None]"]


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
