#!/usr/bin/env bash
# Provisions a real browser for the console's browser tests (tests/console.rs): Debian's
# Chromium and its WebDriver (packages chromium and chromium-driver, installed with apt-get
# when missing and we are root), and Selenium from PyPI in a venv under
# ${QUARRY_CACHE:-~/.cache/quarry}/browser-venv, every package pinned by SHA-256
# (tests/console/requirements.txt, installed with --require-hashes).
# Firefox too, where it can be had: Debian's firefox-esr (apt-get, as Chromium), and Mozilla's
# WebDriver, geckodriver, which Debian does not package: built once from its crate with
# `cargo install --locked` at a pinned version into ${QUARRY_CACHE:-~/.cache/quarry}/geckodriver.
# Prints five lines: the venv's python, the chromium binary, the chromedriver binary, the
# firefox binary and the geckodriver binary (the last two empty, said loudly, where Firefox
# cannot be had: the Firefox run then skips loudly).
# Exits 3, saying so loudly, where no browser can be had (not Debian, not root): the browser
# tests then skip, never silently.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cache="${QUARRY_CACHE:-$HOME/.cache/quarry}"
venv="$cache/browser-venv"
requirements="$root/tests/console/requirements.txt"
chromium="${QUARRY_CHROMIUM:-/usr/bin/chromium}"
driver="${QUARRY_CHROMEDRIVER:-/usr/bin/chromedriver}"

if [ ! -x "$chromium" ] || [ ! -x "$driver" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "provision-browser: installing Debian's chromium and chromium-driver" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q --no-install-recommends chromium chromium-driver >&2 \
      || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends chromium chromium-driver >&2; }
  else
    echo "!!! SKIPPED: the console's browser tests need chromium and chromedriver ($chromium, $driver): apt-get install chromium chromium-driver, or set QUARRY_CHROMIUM and QUARRY_CHROMEDRIVER !!!" >&2
    exit 3
  fi
fi

# Reinstalled whenever the pins change.
stamp="$venv/.ready-$(sha256sum "$requirements" | cut -c1-16)"
if [ ! -f "$stamp" ]; then
  echo "provision-browser: installing Selenium (pinned by SHA-256) into $venv" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --disable-pip-version-check --no-deps --require-hashes \
    -r "$requirements" >&2
  touch "$stamp"
fi

# Firefox: Debian's ESR, and geckodriver built from its crate (pinned; ~5 minutes once).
firefox="${QUARRY_FIREFOX:-/usr/bin/firefox-esr}"
gecko_version="0.37.1"
gecko_root="$cache/geckodriver/$gecko_version"
gecko="${QUARRY_GECKODRIVER:-$gecko_root/bin/geckodriver}"
if [ ! -x "$firefox" ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  echo "provision-browser: installing Debian's firefox-esr" >&2
  apt-get install -y -q --no-install-recommends firefox-esr >&2 \
    || { apt-get update -q >&2 && apt-get install -y -q --no-install-recommends firefox-esr >&2; } \
    || true
fi
if [ -x "$firefox" ] && [ ! -x "$gecko" ] && command -v cargo >/dev/null; then
  echo "provision-browser: building geckodriver $gecko_version (cargo install --locked, once)" >&2
  build="$(mktemp -d)"
  CARGO_TARGET_DIR="$build" nice -n 10 cargo install --quiet --locked geckodriver \
    --version "=$gecko_version" --root "$gecko_root" >&2 || true
  rm -rf "$build"
fi
if [ ! -x "$firefox" ] || [ ! -x "$gecko" ]; then
  echo "!!! Firefox unavailable: the console's Firefox run will be SKIPPED (need $firefox and $gecko: apt-get install firefox-esr; cargo install geckodriver --version $gecko_version) !!!" >&2
  firefox=""
  gecko=""
fi

echo "$venv/bin/python"
echo "$chromium"
echo "$driver"
echo "$firefox"
echo "$gecko"
