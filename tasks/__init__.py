"""Celery tasks: thin wrappers over the capabilities' services that own retries and
scheduling; their base (``app.celery_app.FlaskTask``) owns the app context and the session."""
