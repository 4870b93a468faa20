#!/usr/bin/env bash
# Builds the two container images the Helm chart deploys, without a Docker
# engine (Debian's buildah, vfs storage), and writes them as OCI archives:
#
#   $TARGET/images/clustermesh-apiserver.tar    clustermesh/clustermesh-apiserver:<appVersion>
#   $TARGET/images/clustermesh-node-agent.tar   clustermesh/clustermesh-node-agent:<appVersion>
#
# <appVersion> is helm/clustermesh/Chart.yaml's; $TARGET is $CARGO_TARGET_DIR
# (default target/). Each image is `FROM scratch` plus the release binary at
# /usr/bin/<name>, the shared libraries it loads (its ldd closure) and, for the
# agent, `ip` (iproute2, which it runs to create tunnel devices) with its
# libraries. No shell, no package manager. The apiserver runs as uid 65532;
# the agent as root (it loads eBPF programs and creates devices).
#
#   scripts/build-images.sh [--no-cargo]   (--no-cargo: reuse the release binaries)
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh --images

run_cargo=1
for a in "$@"; do
  case "$a" in
    --no-cargo) run_cargo=0 ;;
    *) echo "build-images.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done

. scripts/images-env.sh

if [ "$run_cargo" = 1 ]; then
  cargo build --release --locked -p clustermesh-apiserver -p clustermesh-node-agent
fi

# add_with_libs ROOTFS FILE [DEST]: copies FILE (to DEST, default its own
# path) and every shared library ldd says it loads, at their paths.
add_with_libs() {
  local rootfs=$1 file=$2 dest=${3:-$2}
  install -D -m 0755 "$file" "$rootfs$dest"
  local libs
  libs=$(ldd "$file" | awk '/=> \//{print $3} /^\t\//{print $1}')
  for lib in $libs; do
    # The file a symlink points at, under the link's own name.
    [ -e "$rootfs$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
  done
}

# base_rootfs ROOTFS: the few files every image has.
base_rootfs() {
  local rootfs=$1
  mkdir -p "$rootfs/etc" "$rootfs/tmp" "$rootfs/usr/bin"
  chmod 1777 "$rootfs/tmp"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' >"$rootfs/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' >"$rootfs/etc/group"
}

# build NAME USER EXTRA_FILES...: one image from a fresh rootfs.
build() {
  local name=$1 user=$2
  shift 2
  local rootfs
  rootfs=$(mktemp -d)
  base_rootfs "$rootfs"
  add_with_libs "$rootfs" "$target/release/$name" "/usr/bin/$name"
  for extra in "$@"; do
    add_with_libs "$rootfs" "$extra"
  done
  local ref="clustermesh/$name:$version"
  local ctr
  ctr=$("${B[@]}" from --quiet scratch)
  "${B[@]}" copy --quiet "$ctr" "$rootfs/" / >/dev/null
  "${B[@]}" config \
    --entrypoint "[\"/usr/bin/$name\"]" --cmd '' \
    --user "$user" \
    --env PATH=/usr/sbin:/usr/bin \
    --label "org.opencontainers.image.title=$name" \
    --label "org.opencontainers.image.version=$version" \
    --label "org.opencontainers.image.source=clustermesh" \
    "$ctr"
  "${B[@]}" commit --quiet --rm "$ctr" "$ref" >/dev/null
  rm -f "$out/$name.tar"
  "${B[@]}" push --quiet "$ref" "oci-archive:$out/$name.tar:$ref"
  rm -rf "$rootfs"
  local size
  size=$(du -m "$out/$name.tar" | cut -f1)
  echo "$ref -> $out/$name.tar (${size} MiB)"
  if [ "$size" -ge 80 ]; then
    echo "build-images.sh: $name.tar is ${size} MiB, over the 80 MiB budget" >&2
    exit 1
  fi
}

build clustermesh-apiserver 65532:65532
# The agent runs `ip` (iproute2) to create and inspect tunnel devices.
build clustermesh-node-agent 0:0 "$(readlink -f "$(command -v ip)")"
