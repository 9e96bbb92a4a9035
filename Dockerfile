# One image for every Python service of the stack: the Celery worker (default
# CMD), Celery beat, Flower, the one-shot `init` and the MLflow tracking server
# (mlflow and psycopg2-binary are in requirements.txt). docker-compose.yaml
# picks the process with `command:`.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

# Non-root user; fixed ids so volume ownership stays stable across rebuilds.
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --create-home --home-dir /home/app --shell /usr/sbin/nologin app

WORKDIR /app

# Dependencies first: this layer is rebuilt only when requirements.txt changes.
# Every pin has a manylinux wheel for CPython 3.11, so no compiler is needed.
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt

# The application. .dockerignore is an allow-list: only worker/ (with its Alembic
# migrations and calibration tables), beat_schedule.py, flowerconfig.py and
# requirements.txt reach the build context.
# Code stays owned by root: the app user can read it, not change it.
COPY . ./

# Writable places for the app user. Named volumes mounted on /beat (beat's
# schedule file), /mlartifacts (MLflow's artifact store) and /mlflow-auth (MLflow's
# users) start out with this ownership; /app/.local is LOCAL_DIR, unused when
# every URL points at a server.
RUN mkdir -p /beat /mlartifacts /mlflow-auth /app/.local \
    && chown app:app /beat /mlartifacts /mlflow-auth /app/.local

USER app

CMD ["celery", "-A", "worker", "worker", "--loglevel=INFO"]
