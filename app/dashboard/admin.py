"""``/admin``: the operators' page, signed in with the admin token and a name: the
scheduled jobs' last runs, reports that need manual billing, unpriced models, parked
events, the month's top customers, ingest lag, a link to Flower, and the actions an
operator takes on them (``app.dashboard.actions``)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, redirect, render_template, request, url_for
from werkzeug.wrappers import Response as BaseResponse

from app.columns import utcnow
from app.config import Settings
from app.dashboard.actions import perform, recent_actions, unlinked_customers
from app.dashboard.models import AdminAction
from app.dashboard.overview import overview
from app.dashboard.session import (
    check_csrf,
    csrf_token,
    page_headers,
    sign_in_admin,
    sign_in_form,
    sign_out,
    signed_in_admin,
    signed_in_operator,
)
from app.errors import AuthenticationError
from app.extensions import db
from app.registry import services

admin = Blueprint("admin", __name__, url_prefix="/admin", template_folder="templates")
admin.after_request(page_headers)


def _settings() -> Settings:
    return current_app.config["SETTINGS"]


@admin.get("/")
def page() -> Any:
    operator = signed_in_operator(_settings())
    if operator is None:
        return redirect(url_for("admin.sign_in_page"))
    done = request.args.get("done", "")
    action = db.session.get(AdminAction, int(done)) if done.isdigit() else None
    return render_template("admin.html", csrf=csrf_token(), operator=operator, action=action)


@admin.post("/actions/<name>")
def act(name: str) -> BaseResponse:
    """One operator's action (a form of the page), recorded; back to the page, which
    says how it went."""
    check_csrf()
    operator = signed_in_operator(_settings())
    if operator is None:
        return redirect(url_for("admin.sign_in_page"))
    action = perform(name, operator, request.form)
    return redirect(url_for("admin.page", done=action.id) + "#actions")


@admin.get("/sign-in")
def sign_in_page() -> Any:
    return sign_in_form("admin")


@admin.post("/sign-in")
def sign_in() -> Any:
    check_csrf()
    operator = " ".join(request.form.get("operator", "").split())[:100]
    if not operator:
        return sign_in_form("admin", "Say who you are: your actions are recorded under it.")
    if not sign_in_admin(request.form.get("token", "").strip(), _settings(), operator):
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
    return {
        **overview(settings, utcnow(), services().redis),
        "actions": recent_actions(),
        "unlinked_customers": unlinked_customers() if settings.stripe_api_key else [],
    }
