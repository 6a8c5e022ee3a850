# One Dockerfile, one target per deployable image:
#   docker build --target hooks   -t sandbox-hooks .
#   docker build --target runtime -t sandbox-runtime .   (the python-runtime-sandbox image)
#   docker build --target router  -t sandbox-router .
FROM python:3.11-slim AS base
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_NO_CACHE_DIR=1
RUN useradd --uid 1000 --create-home --shell /usr/sbin/nologin sandbox
WORKDIR /opt/agent-sandbox
COPY pyproject.toml README.md ./
COPY hooks ./hooks
COPY sandbox_runtime ./sandbox_runtime
COPY sandbox_router ./sandbox_router
COPY sandbox_common ./sandbox_common
COPY agentic_sandbox ./agentic_sandbox
COPY schemas ./schemas

FROM base AS hooks
RUN pip install '.[hooks]'
USER 1000
EXPOSE 8080
ENTRYPOINT ["sandbox-hooks"]
CMD ["--bind", "0.0.0.0:8080"]

FROM base AS runtime
RUN pip install '.[runtime]' && mkdir -p /app && chown 1000:1000 /app
ENV SANDBOX_BASE_DIR=/app
WORKDIR /app
USER 1000
EXPOSE 8888
ENTRYPOINT ["sandbox-runtime"]
CMD ["--port", "8888"]

FROM base AS router
RUN pip install '.[router]'
USER 1000
EXPOSE 8080
ENTRYPOINT ["sandbox-router"]
CMD ["--port", "8080"]
