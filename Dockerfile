# One CPU image for the LLM4Rec jobs. For now its default command trains and evaluates the models
# on the bundled dataset; the service and learner entry points join it as they are built.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# the CPU build of torch first: PyPI's default Linux wheel is the multi-GB CUDA one, and with
# torch==2.13.0 already present the project install below keeps it
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
WORKDIR /src
COPY pyproject.toml README.md ./
COPY common ./common
COPY models ./models
COPY recdata ./recdata
COPY training ./training
COPY retrieval ./retrieval
COPY service ./service
COPY learner ./learner
COPY llm4rec ./llm4rec
RUN pip install .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 MPLBACKEND=Agg HF_HUB_OFFLINE=1 PATH=/opt/venv/bin:$PATH
COPY --from=build /opt/venv /opt/venv
# recdata looks for the bundled dataset in data/ beside its own package folder
COPY data /opt/venv/lib/python3.11/site-packages/data
RUN useradd --create-home --uid 10001 llm4rec && mkdir -p /app/results && chown -R llm4rec /app
USER llm4rec
WORKDIR /app
CMD ["llm4rec", "eval", "--time-budget", "300", "--out", "/app/results"]
