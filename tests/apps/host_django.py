"""A Django project in one module: its settings, its URLs (with the API mounted by the README's recipe),
a login through ``django.contrib.auth`` and its session, for WSGI (``wsgi_app``) and ASGI (``asgi_app``).

``WT_TEST_DJANGO_DB`` names the SQLite file of Django's own tables, migrated
and given the users of :mod:`apps.host_users` (``ada`` is staff) at import.
Settings of Watchtower come from the environment (``WATCHTOWER_DATABASE_URL``...).
"""

from __future__ import annotations

import os

import django
from django.conf import settings

settings.configure(
    DEBUG=False,
    SECRET_KEY="the host's own secret",
    ALLOWED_HOSTS=["127.0.0.1", "localhost"],
    ROOT_URLCONF=__name__,
    INSTALLED_APPS=["django.contrib.contenttypes", "django.contrib.auth", "django.contrib.sessions"],
    MIDDLEWARE=[
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
    ],
    DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": os.environ["WT_TEST_DJANGO_DB"]}},
    PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],  # a test's login in microseconds
    USE_TZ=True,
)
django.setup()

from django.contrib import auth  # noqa: E402  (after setup)
from django.contrib.auth.models import User  # noqa: E402
from django.core.asgi import get_asgi_application  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402
from django.http import HttpRequest, HttpResponse, HttpResponseRedirect  # noqa: E402
from django.middleware.csrf import get_token  # noqa: E402
from django.urls import path  # noqa: E402

from .host_users import USERS  # noqa: E402
from .readme_recipes import run_recipe  # noqa: E402


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse(f"hello {request.user.username or 'stranger'}", content_type="text/plain")


def login(request: HttpRequest) -> HttpResponse:
    if request.method != "POST":
        return HttpResponse(f'<form method="post"><input name="csrfmiddlewaretoken" value="{get_token(request)}">'
                            '<input name="username"><input name="password" type="password"></form>')
    user = auth.authenticate(request, username=request.POST.get("username"), password=request.POST.get("password"))
    if user is None:
        return HttpResponse("wrong user name or password", status=401, content_type="text/plain")
    auth.login(request, user)
    return HttpResponseRedirect("/", status=303)


urlpatterns = [path("", home), path("login", login)]
run_recipe("django", globals())

call_command("migrate", verbosity=0)
for name, (password, admin) in USERS.items():
    if not User.objects.filter(username=name).exists():
        User.objects.create_user(name, password=password, is_staff=admin)

wsgi_app = get_wsgi_application()
asgi_app = get_asgi_application()
