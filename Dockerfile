# One CPU image for the service and the learner (the compose file runs both from it).
# Build: docker build -t llm4rec .   Run: see docker-compose.yml, or `docker run -p 127.0.0.1:8000:8000 llm4rec`
# for the embedded defaults (the first start trains a model on the bundled dataset, then serves).
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# the CPU build of torch first: PyPI's default Linux wheel is the multi-GB CUDA one
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0+cpu
WORKDIR /src
COPY pyproject.toml README.md requirements.lock ./
COPY common ./common
COPY models ./models
COPY recdata ./recdata
COPY training ./training
COPY retrieval ./retrieval
COPY service ./service
COPY learner ./learner
COPY llm4rec ./llm4rec
# every dependency pinned by the lock file
RUN pip install -c requirements.lock .

FROM python:3.11-slim
# MALLOC_ARENA_MAX: per-thread glibc arenas fragmented into +43% resident memory over a 10-minute soak
ENV PYTHONUNBUFFERED=1 MPLBACKEND=Agg HF_HUB_OFFLINE=1 MALLOC_ARENA_MAX=2 PATH=/opt/venv/bin:$PATH
COPY --from=build /opt/venv /opt/venv
# recdata looks for the bundled dataset in data/ beside its own package folder
COPY data /opt/venv/lib/python3.11/site-packages/data
RUN useradd --create-home --uid 10001 llm4rec && mkdir -p /app/runs /app/.cache /app/spool && chown -R llm4rec /app
USER llm4rec
WORKDIR /app
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=5s --start-period=40m --retries=6 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"]
# inside the container the service must listen beyond loopback; publish the port on the host's loopback
CMD ["llm4rec", "serve", "--host", "0.0.0.0", "--port", "8000"]
