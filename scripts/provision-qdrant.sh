#!/usr/bin/env bash
# Provisions a real Qdrant server (the distributed engine Quarry's Qdrant backend runs on) for
# the tests and benchmarks: built once per machine from the vendored sources in ../shared by
# ../shared/tools/build-qdrant.sh (about 30 CPU-minutes the first time, then cached under
# ~/.cache/quarry/qdrant), or taken from QUARRY_QDRANT when that names a binary.
# Prints the binary's path. Exits 3, saying so loudly, when ../shared is absent (a user's
# machine): what needs Qdrant then skips, never silently.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
if [ -n "${QUARRY_QDRANT:-}" ] && [ -x "$QUARRY_QDRANT" ]; then
  echo "$QUARRY_QDRANT"
  exit 0
fi
tool="$root/../shared/tools/build-qdrant.sh"
if [ ! -f "$tool" ]; then
  echo "!!! SKIPPED: Qdrant: $tool is absent (it builds Qdrant from ../shared/vendor); set QUARRY_QDRANT to a qdrant binary to run the Qdrant tests !!!" >&2
  exit 3
fi
# The build needs protoc; on a Debian machine where we are root, install it.
if ! command -v protoc >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "provision-qdrant: installing protoc (protobuf-compiler)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q protobuf-compiler >&2 \
      || { apt-get update -q >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -q protobuf-compiler >&2; }
  else
    echo "provision-qdrant: protoc is missing (Debian: apt-get install -y protobuf-compiler)" >&2
    exit 1
  fi
fi
exec bash "$tool"
