#!/usr/bin/env bash
# Builds the legacy onnx2ncnn converter from your own ncnn checkout and prints the binary's path.
#
#   scripts/build_onnx2ncnn.sh ~/src/ncnn              # a clone of Tencent/ncnn at tag 20250916 or older
#   export ONNX2NCNN=$(scripts/build_onnx2ncnn.sh ~/src/ncnn)
#
# ncnn dropped tools/onnx after release 20250916; check that tag out first (git -C ~/src/ncnn
# checkout 20250916). Needs g++ and protobuf (Debian/Ubuntu: apt-get install g++ protobuf-compiler
# libprotobuf-dev). The binary goes to ${ONNX2NCNN_BUILD_DIR:-~/.cache/onnx2ncnn}; everything else
# this prints goes to stderr.
set -euo pipefail
checkout=${1:?usage: $0 <path to an ncnn checkout with tools/onnx>}
src=$checkout/tools/onnx
if [ ! -f "$src/onnx2ncnn.cpp" ] || [ ! -f "$src/onnx.proto" ]; then
  echo "no tools/onnx/onnx2ncnn.cpp in $checkout: check out ncnn 20250916 or older" >&2
  exit 1
fi
for tool in g++ protoc; do
  command -v "$tool" >/dev/null || { echo "$tool not found: apt-get install g++ protobuf-compiler libprotobuf-dev" >&2; exit 1; }
done
out=${ONNX2NCNN_BUILD_DIR:-$HOME/.cache/onnx2ncnn}
mkdir -p "$out"
tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
cp "$src/onnx2ncnn.cpp" "$src/onnx.proto" "$tmp/"
(cd "$tmp" && protoc --cpp_out=. onnx.proto && g++ -O2 -o onnx2ncnn onnx2ncnn.cpp onnx.pb.cc -I. -lprotobuf -lpthread) >&2
mv -f "$tmp/onnx2ncnn" "$out/onnx2ncnn"
echo "$out/onnx2ncnn"
