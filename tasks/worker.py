"""The Celery entry point: ``celery -A tasks.worker worker`` / ``beat`` / ``flower``."""

from app import create_app_for_serving

flask_app = create_app_for_serving()
celery_app = flask_app.extensions["celery"]
