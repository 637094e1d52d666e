from django.urls import path

from testproject.demo import views

urlpatterns = [
    path("", views.index, name="demo-index"),
    path("enqueue/<str:kind>/", views.enqueue, name="demo-enqueue"),
    path("tasks.json", views.task_list, name="demo-tasks"),
]
