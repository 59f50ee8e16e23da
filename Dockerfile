# One image for every emoflow part in distributed mode (Airflow, MLflow, Bento service).
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends git libgl1 libglib2.0-0 \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /opt/emoflow
COPY requirements.lock pyproject.toml README.md ./
RUN pip install --no-cache-dir "uv==0.13.9" \
    && uv pip install --system --no-cache -r requirements.lock
COPY emoflow emoflow
COPY ml ml
COPY monitoring monitoring
COPY serving serving
COPY dags dags
COPY plugins plugins
COPY params.yaml ./
RUN uv pip install --system --no-deps -e .
# The image has no .git: the commit it was built from is its code's identity in MLflow lineage
# (`GIT_COMMIT=$(git rev-parse HEAD) docker compose build`).
ARG GIT_COMMIT=unknown
ENV EMOFLOW_GIT_COMMIT=${GIT_COMMIT}
ENV AIRFLOW__CORE__DAGS_FOLDER=/opt/emoflow/dags \
    AIRFLOW__CORE__PLUGINS_FOLDER=/opt/emoflow/plugins \
    AIRFLOW__CORE__LOAD_EXAMPLES=False \
    YOLO_OFFLINE=true BENTOML_DO_NOT_TRACK=True GX_ANALYTICS_ENABLED=false
