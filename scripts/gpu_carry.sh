#!/usr/bin/env bash
# Makes .carry/{httplib,lzma,pcre2}: the C/C++ pieces the GPU machine lacks (../shared/gpu-notes.md: it has the
# runtimes of liblzma and libpcre2-8 but not their headers, and no cpp-httplib), copied from this Debian machine's
# installed -dev packages (scripts/setup.sh installs them). scripts/gpu_check.sh and CMakeLists.txt look there.
#   scripts/gpu_carry.sh          then carry .carry/httplib, .carry/lzma, .carry/pcre2 in the device call that builds
# A fresh checkout has no .carry (it is ignored by git); run this once per checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
arch=$(dpkg-architecture -qDEB_HOST_MULTIARCH 2>/dev/null || echo x86_64-linux-gnu)
for p in libcpp-httplib-dev libcpp-httplib0.11 libbrotli-dev libssl-dev liblzma-dev libpcre2-dev; do
  dpkg -s "$p" >/dev/null 2>&1 || { echo "gpu_carry: Debian package $p is not installed (scripts/setup.sh installs it)" >&2; exit 1; }
done
tmp=$(mktemp -d .carry.tmp.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
# headers: a package's files under /usr/include, paths kept (multiarch ones such as openssl's configuration.h too)
headers() {  # package destination
  dpkg -L "$1" | grep '^/usr/include/.*\.h$' | while read -r f; do
    rel=${f#/usr/include/}
    mkdir -p "$2/include/$(dirname "$rel")"
    cp -L "$f" "$2/include/$rel"
  done
}
mkdir -p "$tmp/httplib/lib" "$tmp/lzma/lib" "$tmp/pcre2"
headers libcpp-httplib-dev "$tmp/httplib"
headers libssl-dev "$tmp/httplib"        # httplib.h includes openssl's headers under CPPHTTPLIB_OPENSSL_SUPPORT
headers libbrotli-dev "$tmp/httplib"     # ... and brotli's under CPPHTTPLIB_BROTLI_SUPPORT (zlib.h is there already)
so=$(dpkg -L libcpp-httplib0.11 | grep -E '/libcpp-httplib\.so\.[0-9.]+$' | head -1)
cp -L "$so" "$tmp/httplib/lib/$(basename "$so")"
for b in common enc dec; do              # the brotli runtime the library links (by soname)
  cp -L "/usr/lib/$arch/libbrotli$b.so.1" "$tmp/httplib/lib/"
done
headers liblzma-dev "$tmp/lzma"
cp -L "/usr/lib/$arch/liblzma.a" "$tmp/lzma/lib/"
headers libpcre2-dev "$tmp/pcre2"
[ -f "$tmp/httplib/include/httplib.h" ] && [ -f "$tmp/lzma/include/lzma.h" ] && [ -f "$tmp/pcre2/include/pcre2.h" ] \
  || { echo "gpu_carry: a header is missing from the copies" >&2; exit 1; }
mkdir -p .carry
rm -rf .carry/httplib .carry/lzma .carry/pcre2
mv "$tmp/httplib" "$tmp/lzma" "$tmp/pcre2" .carry/
du -sh .carry/httplib .carry/lzma .carry/pcre2
