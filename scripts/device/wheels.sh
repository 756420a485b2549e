#!/usr/bin/env bash
# Build .whl/ (git-ignored), the wheels a device call carries (`carry: [".whl"]`) and
# scripts/device/setup.sh installs: what anira needs beyond the H200 image (torch 2.11,
# numpy, scikit-learn, transformers, einops, pluggy are there; transformer-lens and its
# own requirements are not). Python 3.12 x86-64 wheels, no dependency resolution, so pip
# never pulls a CUDA torch; about 28 MB. Run on this machine from the repo root:
#   bash scripts/device/wheels.sh
# The versions are those this project's CPU environment resolved (2026-12); when the image
# or transformer-lens changes, compare with the image's `python3 -m pip list`.
set -euo pipefail
mkdir -p .whl
pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
  transformer-lens==4.3.0 fancy-einsum==0.0.3 beartype==0.23.1 typeguard==4.6.1 datasets==5.2.0 dill==0.4.1 \
  multiprocess==0.70.19 wandb==0.31.0 pydantic==2.13.4 pydantic-core==2.46.4 annotated-types==0.7.0 \
  typing-inspection==0.4.2 platformdirs==4.14.9 sniffio==1.3.1 distro==1.9.0 truststore==0.10.5 \
  googleapis-common-protos==1.76.0 opentelemetry-api==1.45.2 opentelemetry-sdk==1.45.2 opentelemetry-proto==1.45.2 \
  opentelemetry-semantic-conventions==0.66b2 opentelemetry-exporter-http-transport==0.66b2 \
  opentelemetry-exporter-otlp-common==0.66b2 opentelemetry-exporter-otlp-proto-common==1.45.2 \
  opentelemetry-exporter-otlp-proto-http==1.45.2 httpx2==2.16.2 httpcore2==2.16.2
# published as source only: build them here (pure Python, so the wheels fit any platform)
pip wheel -q --no-deps -w .whl transformers-stream-generator==0.0.5 cwevals==0.0.1b1
ls .whl | wc -l
