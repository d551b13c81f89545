# dramatiq-watchtower with the demo app: the image of docker-compose.yml's
# supervisor, api and producer services.  For your own app, copy your code
# instead of examples/ and set WATCHTOWER_APP (or app in watchtower.toml).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app

# The package first (its layer is reused while only the examples change).
COPY pyproject.toml README.md ./
COPY watchtower/ watchtower/
RUN pip install ".[postgresql]"

COPY examples/ examples/
# The demo app module (demo_app) is imported by name.
ENV PYTHONPATH=/app/examples \
    WATCHTOWER_CONFIG=/app/examples/watchtower.toml

RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin watchtower
USER watchtower

EXPOSE 9192
CMD ["watchtower", "supervise"]
