# Board image: the device package, its requirements and the shipped model - nothing else.
# Multi-arch (no engine runs on the build machines here; build elsewhere):
#   docker buildx build --platform linux/arm64,linux/amd64 -t mri-edge .
#   docker run --rm -v "$PWD/scans:/scans:ro" mri-edge /scans
FROM python:3.11-slim-bookworm
ENV PYTHONDONTWRITEBYTECODE=1 PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app
COPY device/requirements.txt device/requirements.txt
RUN pip install -r device/requirements.txt
COPY device/ device/
USER nobody
ENTRYPOINT ["python", "-m", "device.classify"]
CMD ["--help"]
