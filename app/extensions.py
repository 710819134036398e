"""Extension singletons, bound to an app in ``create_app``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.orm import DeclarativeBase


class Base(DeclarativeBase):
    pass


db = SQLAlchemy(model_class=Base)
migrate = Migrate()

# Every table's base: ``db.Model`` is made at run time, so the type checker is told
# what it is (the declarative base above, with Flask-SQLAlchemy's session binding).
if TYPE_CHECKING:
    Model = Base
else:
    Model = db.Model
