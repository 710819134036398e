"""Celery tasks: thin wrappers over ``app.services`` that own retries and scheduling."""
