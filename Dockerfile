# One CPU image for the LLM4Rec jobs. For now its default command trains and evaluates the baselines
# on the bundled dataset; the service and learner entry points join it as they are built.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
# the CPU build of torch: PyPI's default Linux wheel is the multi-GB CUDA one
RUN pip install --prefix=/install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY common ./common
COPY models ./models
COPY recdata ./recdata
COPY training ./training
COPY retrieval ./retrieval
COPY service ./service
COPY learner ./learner
COPY llm4rec ./llm4rec
RUN pip install --prefix=/install .

FROM python:3.11-slim
ENV PYTHONUNBUFFERED=1 MPLBACKEND=Agg
COPY --from=build /install /usr/local
WORKDIR /app
# recdata looks for the bundled dataset in data/ beside its own package folder
COPY data /usr/local/lib/python3.11/site-packages/data
RUN useradd --create-home --uid 10001 llm4rec && mkdir -p /app/results && chown llm4rec /app/results
USER llm4rec
CMD ["llm4rec", "eval", "--out", "/app/results"]
