#!/bin/sh
# Shrink the serving virtualenv inside the image build (deploy/Dockerfile's builder stage): remove what is never
# loaded at run time. Each step is checked afterwards by importing the service and running a model in the image.
#   deploy/slim-venv.sh /opt/venv
set -eu
venv="$1"
site=$(echo "$venv"/lib/python3*/site-packages)
[ -d "$site" ] || { echo "slim-venv: no site-packages under $venv" >&2; exit 2; }
before=$(du -sm "$venv" | cut -f1)

# The image installs nothing at run time.
"$venv/bin/python" -m pip uninstall -y -q pip setuptools wheel >/dev/null 2>&1 || true
rm -f "$site/distutils-precedence.pth"

# Test suites and test data shipped inside wheels (numpy, scipy, onnxruntime, ...); not `testing`
# packages, which some libraries import. Byte code is compiled later for what start-up imports (Dockerfile).
find "$site" -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +
# Type stubs and Cython sources: read by type checkers and compilers only.
find "$site" -type f \( -name '*.pyi' -o -name '*.pyx' -o -name '*.pxd' \) -delete
# onnxruntime's C-API library: the Python binding (onnxruntime_pybind11_state) carries its own copy of the runtime.
rm -f "$site"/onnxruntime/capi/libonnxruntime.so.*
# onnxruntime's Python tools (transformer optimisers, quantisation, model converters, sample data): an inference
# session imports none of them.
rm -rf "$site"/onnxruntime/transformers "$site"/onnxruntime/quantization "$site"/onnxruntime/tools \
       "$site"/onnxruntime/datasets

# Debug symbols. Only libraries without RPATH/RUNPATH and outside auditwheel's `<pkg>.libs/`: those were rewritten
# by patchelf, and strip breaks them ("ELF load command address/offset not page-aligned").
if command -v strip >/dev/null 2>&1 && command -v readelf >/dev/null 2>&1; then
  find "$site" -type f -name '*.so*' -not -path '*.libs/*' | while read -r lib; do
    if ! readelf -d "$lib" 2>/dev/null | grep -qE '\((RPATH|RUNPATH)\)'; then
      strip --strip-unneeded "$lib" 2>/dev/null || echo "slim-venv: could not strip $lib (kept as is)" >&2
    fi
  done
else
  echo "slim-venv: no strip/readelf (binutils); shared libraries keep their symbols" >&2
fi
echo "slim-venv: $venv ${before} MB -> $(du -sm "$venv" | cut -f1) MB" >&2
