FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /srv
COPY pyproject.toml README.md ./
COPY app ./app
COPY tasks ./tasks
COPY migrations ./migrations
COPY Makefile ./
RUN apt-get update && apt-get install -y --no-install-recommends make curl \
    && rm -rf /var/lib/apt/lists/* \
    && python -m venv /srv/.venv \
    && /srv/.venv/bin/pip install --no-cache-dir -e . \
    && useradd --system --home /srv billing && mkdir -p /srv/instance && chown billing /srv/instance
USER billing
ENV PATH=/srv/.venv/bin:$PATH
EXPOSE 8000
CMD ["make", "api"]
