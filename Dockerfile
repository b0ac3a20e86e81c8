# runq's container image: `docker build -t runq .`, then `docker run runq worker tasks:app`.
# compose.yaml runs a whole stack on it. Stage 1 builds the wheel from this checkout; the
# final stage installs only that wheel (with the dashboard and PostgreSQL extras), so the
# image holds exactly what `pip install runq` would, and no build tools or sources.
ARG PYTHON_VERSION=3.12

FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
RUN pip install --no-cache-dir build==1.2.2
COPY pyproject.toml README.md LICENSE ./
COPY runq ./runq
# A requirements file naming the wheel and its extras, so the final stage installs exactly it.
RUN python -m build --wheel --outdir /dist . \
    && echo "runq[dashboard,postgres] @ file://$(echo /dist/runq-*.whl)" > /dist/requirements.txt

FROM python:${PYTHON_VERSION}-slim
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
COPY --from=build /dist /dist
RUN pip install --no-cache-dir --requirement /dist/requirements.txt \
    && rm -rf /dist \
    && groupadd --gid 10001 runq \
    && useradd --create-home --uid 10001 --gid runq runq \
    && install -d -o runq -g runq /app
# The tasks' code goes in /app (the working directory is importable: `runq worker tasks:app`).
# Without RUNQ_URL the broker is sqlite:///runq.db in /app, which the runq user may write.
WORKDIR /app
USER 10001:10001
# Healthy while the broker answers: the same check as `runq status` at a shell (exit 1 if not).
HEALTHCHECK --interval=30s --timeout=10s --start-period=10s --retries=3 CMD ["runq", "status", "--json"]
ENTRYPOINT ["runq"]
CMD ["--help"]
