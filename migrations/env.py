"""Alembic environment for Flask-Migrate.

Unlike the generated template this does not call ``logging.config.fileConfig``:
migrations run inside every process at start-up, and must not reset the
application's logging configuration.
"""

import logging

from alembic import context
from flask import current_app

logger = logging.getLogger("alembic.env")
config = context.config


def _db():
    return current_app.extensions["migrate"].db


def run_migrations_offline() -> None:
    context.configure(
        url=_db().engine.url.render_as_string(hide_password=False),
        target_metadata=_db().metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def connection_is_sqlite() -> bool:
    return _db().engine.dialect.name == "sqlite"


def run_migrations_online() -> None:
    def process_revision_directives(context, revision, directives):
        if getattr(config.cmd_opts, "autogenerate", False) and directives[0].upgrade_ops.is_empty():
            directives[:] = []
            logger.info("No changes in schema detected.")

    conf_args = dict(current_app.extensions["migrate"].configure_args)
    conf_args.setdefault("process_revision_directives", process_revision_directives)
    conf_args.setdefault("render_as_batch", connection_is_sqlite())
    with _db().engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=_db().metadata,
            **conf_args,
        )
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
