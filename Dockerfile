# cellmfg prediction service: BentoML + onnxruntime with the serving lock only (requirements/serve.lock, no
# TensorFlow), as a non-root user, configured by environment variables (README, "Deploy").
#
#   docker build -t cellmfg .                                        # models from MLFLOW_TRACKING_URI at run time
#   docker build -t cellmfg --build-arg BUNDLE_DIR=bundle .          # bake in `cellmfg registry export-bundle` output
#   docker build --build-arg BASE_IMAGE=local/python-base:3.11 ...   # any Debian-like image with Python 3.11
#   docker run -p 3000:3000 -e MLFLOW_TRACKING_URI=http://mlflow:5000 cellmfg
#
# Stages: `builder` installs and slims the virtualenv and checks it; `runtime` adds it to the base with the app and
# a non-root user; the last stage flattens `runtime` into one layer, so that the base's pip, setuptools and docs,
# removed in `runtime`, are not shipped underneath. The serving lock has no shap, numba or llvmlite: the service
# computes its exact SHAP values itself (service/engine/shapley.py).
ARG BASE_IMAGE=python:3.11-slim

FROM ${BASE_IMAGE} AS builder
# Optional package index settings, passed through to pip (e.g. a lab's mirror); TLS trust comes from the base image
# (PIP_CERT / SSL_CERT_FILE, as the local base image sets them).
ARG PIP_INDEX_URL
ARG PIP_EXTRA_INDEX_URL
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PIP_DEFAULT_TIMEOUT=180 PYTHONUNBUFFERED=1
# binutils for strip (deploy/slim-venv.sh); best effort: without it the image is only larger.
RUN if ! command -v strip >/dev/null 2>&1; then \
      (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends binutils) \
        >/dev/null 2>&1 || echo "builder: binutils not installed; libraries keep their symbols" >&2; \
    fi
RUN python3 -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' \
 && python3 -m venv /opt/venv
COPY requirements/serve.lock /tmp/serve.lock
# The lock is exact and complete: --no-deps installs it as is, with no resolver run.
RUN /opt/venv/bin/pip install -q --no-deps --no-compile -r /tmp/serve.lock \
 && /opt/venv/bin/pip check
COPY deploy/slim-venv.sh /tmp/slim-venv.sh
RUN sh /tmp/slim-venv.sh /opt/venv
COPY cellmfg/ /app/cellmfg/
COPY service/ /app/service/
# A bundle directory inside the build context (manifest.json, ONNX files, contracts), or the placeholder.
ARG BUNDLE_DIR=deploy/no-bundle
COPY ${BUNDLE_DIR}/ /opt/cellmfg/bundle/
COPY deploy/image_check.py /tmp/image_check.py
COPY deploy/entrypoint.sh /usr/local/bin/cellmfg-entrypoint
# Readable by the service user whatever the build host's umask (chmod here: in `runtime` it would copy every file).
RUN chmod -R a+rX /app /opt/cellmfg && chmod 0755 /usr/local/bin/cellmfg-entrypoint \
 && find /app -name __pycache__ -prune -exec rm -rf {} + \
 && cd /app && PYTHONPATH=/app /opt/venv/bin/python /tmp/image_check.py

FROM ${BASE_IMAGE} AS runtime
# Nothing is installed at run time: drop the base's pip, setuptools and wheel (Debian's packages, or the official
# image's copies), documentation, message translations (the service logs in English) and package lists; glibc's
# iconv converters (Python has its own codecs) and the standard library's parts no server imports (2to3, pydoc's
# topics, ensurepip, IDLE, Tk, the test suite), wherever the base keeps its Python.
RUN if dpkg -s python3-pip >/dev/null 2>&1; then \
      DEBIAN_FRONTEND=noninteractive apt-get purge -y -q python3-pip python3-setuptools python3-wheel >/dev/null; \
    fi \
 && (python3 -m pip uninstall -y -q pip setuptools wheel >/dev/null 2>&1 || true) \
 && rm -rf /usr/share/doc/* /usr/share/man/* /usr/share/info/* /var/lib/apt/lists/* /var/cache/apt/* \
           /var/cache/debconf/*-old /var/log/* /root/.cache /usr/lib/x86_64-linux-gnu/gconv \
 && for lib in /usr/lib/python3.11 /usr/local/lib/python3.11; do \
      rm -rf "$lib/lib2to3" "$lib/pydoc_data" "$lib/ensurepip" "$lib/idlelib" "$lib/tkinter" "$lib/turtledemo" \
             "$lib/test"; \
    done \
 && find /usr/share/locale -mindepth 1 -maxdepth 1 ! -name locale.alias -exec rm -rf {} + \
 && groupadd --system --gid 10001 cellmfg \
 && useradd --system --uid 10001 --gid cellmfg --home-dir /home/cellmfg --create-home --shell /usr/sbin/nologin \
      cellmfg
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /app /app
COPY --from=builder /opt/cellmfg/bundle /opt/cellmfg/bundle
COPY --from=builder /usr/local/bin/cellmfg-entrypoint /usr/local/bin/cellmfg-entrypoint

FROM scratch
COPY --from=runtime / /
ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8 \
    PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    BENTOML_HOST=0.0.0.0 \
    BENTOML_PORT=3000 \
    BENTOML_HOME=/tmp/bentoml \
    BENTOML_DO_NOT_TRACK=true \
    DO_NOT_TRACK=true \
    MLFLOW_DISABLE_TELEMETRY=true \
    CELLMFG_ALIAS=champion \
    CELLMFG_POLL_SECONDS=30 \
    CELLMFG_ORT_THREADS=1 \
    CELLMFG_MAX_ROWS=10000 \
    CELLMFG_WORKERS=1
LABEL org.opencontainers.image.title="cellmfg" \
      org.opencontainers.image.description="Electrochemical-cell component property predictions (BentoML + ONNX)" \
      org.opencontainers.image.licenses="Apache-2.0"
USER cellmfg:cellmfg
WORKDIR /app
EXPOSE 3000
# Ready = every served model loaded (BentoML's /readyz). The first start may fetch eight models from MLflow.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
  CMD ["python", "-c", "import os, sys, urllib.request; port = os.environ.get('BENTOML_PORT', '3000'); sys.exit(0 if urllib.request.urlopen(f'http://127.0.0.1:{port}/readyz', timeout=4).status == 200 else 1)"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["cellmfg-entrypoint"]
CMD ["serve"]
