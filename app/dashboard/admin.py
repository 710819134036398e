"""``/admin``: the operators' page, signed in with the admin token: the scheduled jobs'
last runs, reports that need manual billing, unpriced models, parked events, the
month's top customers, ingest lag, and a link to Flower."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from app.columns import utcnow
from app.config import Settings
from app.dashboard.overview import overview
from app.dashboard.session import (
    check_csrf,
    csrf_token,
    page_headers,
    sign_in_admin,
    sign_in_form,
    sign_out,
    signed_in_admin,
)
from app.errors import AuthenticationError
from app.registry import services

admin = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates")
admin.after_request(page_headers)


def _settings() -> Settings:
    return current_app.config["SETTINGS"]


@admin.get("/")
def page() -> Any:
    if not signed_in_admin(_settings()):
        return redirect(url_for("admin.sign_in_page"))
    return render_template("admin.html", csrf=csrf_token())


@admin.get("/sign-in")
def sign_in_page() -> Any:
    return sign_in_form("admin")


@admin.post("/sign-in")
def sign_in() -> Any:
    check_csrf()
    if not sign_in_admin(request.form.get("token", "").strip(), _settings()):
        return sign_in_form("admin", "That is not the admin token.")
    return redirect(url_for("admin.page"))


@admin.post("/sign-out")
def sign_out_admin() -> BaseResponse:
    return sign_out("admin.sign_in_page")


@admin.get("/data")
def data() -> dict[str, Any]:
    settings = _settings()
    if not signed_in_admin(settings):
        raise AuthenticationError("sign in first", field="session")
    return overview(settings, utcnow(), services().redis)
