from django_tasks_q import registry


def test_tasks_modules_of_installed_apps_are_discovered():
    names = registry.all_tasks()
    assert "tests.testapp.tasks.add" in names
    assert "testproject.demo.tasks.flaky_call" in names
    assert "custom.task.name" in names
