# Each long-running process of the stack, plus the two README commands. The process
# targets exec: make passes a SIGTERM (docker stop) straight to the server it runs.
# The process targets expect the project installed (python3 scripts/dev.py test does it).
PY ?= .venv/bin/python
CELERY = $(PY) -m celery -A tasks.worker

.PHONY: run test api worker beat flower bench lint

run:
	python3 scripts/dev.py serve

test:
	python3 scripts/dev.py test

api:
	exec $(PY) -m gunicorn -c python:app.observability.gunicorn_conf --workers $${WEB_CONCURRENCY:-2} --worker-class gthread --threads $${WEB_THREADS:-2} \
		--bind 0.0.0.0:$${PORT:-8000} 'app:create_app_for_serving()'

worker:
	exec $(CELERY) worker --loglevel=INFO --concurrency=$${WORKER_CONCURRENCY:-2}

beat:
	exec $(CELERY) beat --loglevel=INFO

# Flower listens on loopback unless FLOWER_ADDRESS says otherwise; with
# FLOWER_BASIC_AUTH (user:password) it asks for it.
flower:
	exec $(CELERY) flower --port=$${FLOWER_PORT:-5555} --address=$${FLOWER_ADDRESS:-127.0.0.1} \
		$${FLOWER_BASIC_AUTH:+--basic-auth=$$FLOWER_BASIC_AUTH}

bench:
	$(PY) -m bench

# What CI checks besides the tests: lint, format, the import contract, types.
lint:
	$(PY) -m ruff check app tasks tests bench scripts migrations
	$(PY) -m ruff format --check app tasks tests bench scripts migrations
	$(dir $(PY))lint-imports
	$(PY) -m mypy
