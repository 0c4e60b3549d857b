#!/usr/bin/env bash
# The demo's Redfish BMCs run sushy-tools' emulator (OpenStack's, what Ironic
# and Metal3 test against). Nothing to do when the lab already finds one
# ($RACKBOOT_SUSHY_TOOLS, ../shared/tools/sushy-tools beside the checkout, or
# sushy-emulator on the PATH); otherwise it is installed from PyPI into a
# virtualenv in .cache/sushy that uses Debian's Flask and friends (make deps
# installs them), and `make demo` appends its bin/ to the PATH.
set -euo pipefail

venv=.cache/sushy
shared=${SHARED_TOOLS:-../shared/tools}

[ -n "${RACKBOOT_SUSHY_TOOLS:-}" ] && exit 0
[ -f "$shared/sushy-tools/sushy_tools/emulator/main.py" ] && exit 0
command -v sushy-emulator >/dev/null 2>&1 && exit 0
[ -x "$venv/bin/sushy-emulator" ] && exit 0

echo "demo: installing sushy-tools (the virtual Redfish BMC) from PyPI into $venv"
if ! /usr/bin/python3 -c 'import ensurepip' 2>/dev/null; then
  if [ "$(id -u)" != 0 ]; then
    echo "demo: python3-venv is missing: sudo apt-get install -y python3-venv" >&2
    exit 1
  fi
  apt-get install -y -q python3-venv >/dev/null
fi
rm -rf "$venv"
/usr/bin/python3 -m venv --system-site-packages "$venv"
if ! "$venv/bin/pip" install --quiet --disable-pip-version-check sushy-tools; then
  rm -rf "$venv"
  echo "demo: could not install sushy-tools from PyPI. Install it another way (pip install sushy-tools)," >&2
  echo "demo: or point RACKBOOT_SUSHY_TOOLS at a sushy-tools source folder; or run the demo on your own" >&2
  echo "demo: rack file without Redfish BMCs: bin/rackboot lab demo -f rack.yaml" >&2
  exit 1
fi
