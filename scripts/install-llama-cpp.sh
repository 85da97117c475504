#!/usr/bin/env bash
# Build llama-cpp-python from its PyPI sdist for this CPU, once per virtual environment, and
# put llama.cpp's own GGUF converter beside it (chattune export --format gguf runs it).
#
# Why not GGML_NATIVE=ON (-march=native): on an Intel Xeon with AMX, 0.3.36 built that way
# segfaulted in llama_decode on Q4_1 and Q8_0 weights (ggml's AMX kernels) while F16/BF16 ran.
# So the build is non-native with every x86 extension this CPU reports turned on explicitly,
# and the AMX kernels off. tests/test_llama_cpp.py decodes every quantization `chattune export`
# offers with the result.
#
# Usage: scripts/install-llama-cpp.sh VENV   (the venv's pip and python are used; the
# package's own pure-Python dependencies come with `pip install -e ".[llama]"` afterwards)
set -euo pipefail
VERSION=0.3.36
venv=${1:?usage: $0 VENV}
pip="$venv/bin/pip"
share="$venv/share/chattune/llama.cpp"
marker="$venv/.llama-cpp-build"

flags=$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || true)
has() { [[ " $flags " == *" $1 "* ]] && echo ON || echo OFF; }
args=(-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF
      -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
if [[ $(uname -m) == x86_64 ]]; then
  args+=(-DGGML_SSE42="$(has sse4_2)" -DGGML_AVX="$(has avx)" -DGGML_AVX2="$(has avx2)"
         -DGGML_FMA="$(has fma)" -DGGML_F16C="$(has f16c)" -DGGML_BMI2="$(has bmi2)"
         -DGGML_AVX_VNNI="$(has avx_vnni)" -DGGML_AVX512="$(has avx512f)"
         -DGGML_AVX512_VBMI="$(has avx512vbmi)" -DGGML_AVX512_VNNI="$(has avx512_vnni)"
         -DGGML_AVX512_BF16="$(has avx512_bf16)")
else
  args=(-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF)  # ARM and others: no AMX to avoid
fi
want="llama-cpp-python==$VERSION ${args[*]}"

if [[ -f $marker && $(cat "$marker") == "$want" && -f $share/convert_hf_to_gguf.py ]] &&
   "$venv/bin/python" -c 'import llama_cpp' 2>/dev/null; then
  exit 0  # built for this CPU already
fi

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$pip" download -q --no-deps --no-binary :all: "llama-cpp-python==$VERSION" -d "$tmp"
sdist=$(ls "$tmp"/llama_cpp_python-*.tar.gz)
echo "building llama-cpp-python $VERSION (a few minutes): ${args[*]}"
# --no-cache-dir: pip's wheel cache does not key on CMAKE_ARGS, so a wheel built for another
# CPU (or with AMX) could be reused.
CMAKE_ARGS="${args[*]}" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  "$pip" install -q --no-cache-dir --force-reinstall --no-deps "$sdist"

# llama.cpp's converter and the gguf-py it was written against, from the same source.
rm -rf "$share" && mkdir -p "$share"
top=$(basename "$sdist" .tar.gz)/vendor/llama.cpp
tar -xzf "$sdist" -C "$tmp" "$top/convert_hf_to_gguf.py" "$top/conversion" "$top/gguf-py" \
    "$top/LICENSE"
cp -r "$tmp/$top/." "$share/"
echo "$want" > "$marker"
