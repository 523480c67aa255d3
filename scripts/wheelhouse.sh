#!/usr/bin/env bash
# Build an offline wheelhouse of adagc-repro's pure-Python dependencies for an air-gapped GPU node that
# already has torch, transformers, tokenizers, numpy, pandas, pyarrow, rich and typer installed.
#
#   scripts/wheelhouse.sh [OUT_DIR=.whl] [PYTHON_VERSION=3.12]
#   # on the node:
#   python3 -m pip install --no-index --no-deps --target /tmp/site OUT_DIR/*.whl && export PYTHONPATH=/tmp/site:$PWD
set -euo pipefail
out=${1:-.whl}
pyver=${2:-3.12}
mkdir -p "$out"
packages=(
  hydra-core==1.3.8 omegaconf==2.3.1
  datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
  zclip==1.0.0 pytorch-optimizer==4.1.0 torch-optimi==0.3.3 lion-pytorch==0.2.5
)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version "$pyver" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  --platform any -d "$out" "${packages[@]}"
# antlr4's runtime (needed by omegaconf) is published as a source archive only: build its pure wheel.
python3 -m pip wheel -q --no-deps -w "$out" antlr4-python3-runtime==4.9.3
ls "$out"
