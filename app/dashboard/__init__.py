"""The web pages: ``/dashboard`` for customers (signed in with an API key) and
``/admin`` for operators (signed in with the admin token).

Pages are rendered by Jinja with nothing from an event in them; their figures
come from ``/dashboard/data/…`` and ``/admin/data``, which answer with exactly
what the API answers (the same functions), and the browser writes them with
``textContent`` and draws them with Chart.js, served from ``static/vendor``.
"""

from __future__ import annotations

from flask import Flask

from app.config import Settings


def register_pages(app: Flask, settings: Settings) -> None:
    from app.dashboard.admin import admin
    from app.dashboard.customer import dashboard
    from app.dashboard.session import init_sessions

    init_sessions(app, settings)
    app.register_blueprint(dashboard)
    app.register_blueprint(admin)
