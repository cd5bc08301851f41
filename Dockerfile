# The auditor image: CLI, Celery workers and beat. Used by docker-compose.yml.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AUDITOR_HOME=/var/lib/auditor

WORKDIR /app

# Dependencies first, from the metadata alone, so that editing the code does not reinstall torch.
COPY pyproject.toml README.md ./
RUN mkdir -p auditor workers \
    && touch auditor/__init__.py workers/__init__.py \
    && pip install -e . \
    && rm -rf auditor workers

# The code, the migrations next to it (auditor/store/migrate.py finds /app/alembic.ini).
COPY alembic.ini ./
COPY migrations ./migrations
COPY workers ./workers
COPY auditor ./auditor
RUN pip install --no-deps -e . \
    && useradd --create-home --uid 1000 auditor \
    && mkdir -p "$AUDITOR_HOME" \
    && chown auditor "$AUDITOR_HOME"

# Celery refuses to be comfortable as root; the GPU device files work for any user.
USER auditor
VOLUME ["/var/lib/auditor"]
CMD ["auditor", "--help"]
