#!/bin/sh
# Makes a virtual environment and installs layerstream into it, with the torch
# release the project is tested with. The README's quick start, CI and both
# container images run this one script, so an image installs what CI tested.
#
#   sh docker/install.sh [VENV [EXTRA]]      e.g. sh docker/install.sh .venv test
#
# Run it from the repository root. pip honours PIP_EXTRA_INDEX_URL: the CPU
# image points it at PyTorch's CPU-only builds, which are a tenth of the size.
set -eu

venv="${1:-.venv}"
extra="${2:+[$2]}"

python3 -m venv "$venv"
"$venv/bin/pip" install torch==2.13.0 -e ".$extra"
