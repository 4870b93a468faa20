#!/usr/bin/env bash
# Smoke test of the container images (run by .ci/run after the tests):
#  1. builds them (scripts/build-images.sh) unless --no-build;
#  2. from each OCI archive, as a user would get it: `--version` runs inside
#     the image (buildah run --isolation chroot);
#  3. the apiserver image, as its non-root user, against a real etcd on
#     loopback with a PKI from `clustermesh certs init`: /readyz answers 200.
# Everything it starts is stopped and removed on exit, also on failure.
set -euo pipefail
cd "$(dirname "$0")/.."

build=1
for a in "$@"; do
  case "$a" in
    --no-build) build=0 ;;
    *) echo "test-images.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" -eq 0 ] || { echo "test-images.sh: buildah's chroot isolation needs root" >&2; exit 1; }

. scripts/images-env.sh
[ "$build" = 0 ] || scripts/build-images.sh
# The CLI writes the test's PKI (a no-op build after scripts/test.sh).
cargo build --quiet --workspace --bins

work=$(mktemp -d)
ctrs=()
pids=()
# The apiserver inside `buildah run`: a SIGKILLed buildah leaves the chroot
# exec and the server behind (reparented to init), so they are found by their
# unique command line and killed too.
server_pattern=""
cleanup() {
  if [ -n "$server_pattern" ]; then pkill -9 -f -- "$server_pattern" 2>/dev/null || true; fi
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  for c in "${ctrs[@]}"; do "${B[@]}" rm "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
fail() { echo "test-images.sh: FAIL: $*" >&2; exit 1; }

passed=0
for name in clustermesh-apiserver clustermesh-node-agent; do
  ctr=$("${B[@]}" from --quiet "oci-archive:$out/$name.tar")
  ctrs+=("$ctr")
  # buildah 1.28's chroot isolation now and then loses a short-lived
  # command's output on a loaded machine (exit 0, nothing printed): an empty
  # answer is asked again, a wrong one fails at once.
  got=""
  for attempt in 1 2 3; do
    got=$("${B[@]}" run --isolation chroot "$ctr" -- "/usr/bin/$name" --version 2>&1) || fail "$name --version in its image: $got"
    [ -z "$got" ] || break
    echo "note: $name --version printed nothing (attempt $attempt), asking again" >&2
  done
  [ "$got" = "$name $version" ] || fail "$name --version printed '$got', expected '$name $version'"
  echo "ok: $name --version in its image: $got"
  passed=$((passed + 1))
done

# The apiserver image against a real etcd.
etcd_port=$(free_port)
etcd_peer=$(free_port)
etcd --name img --data-dir "$work/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
  --initial-cluster "img=http://127.0.0.1:$etcd_peer" --log-level warn >"$work/etcd.log" 2>&1 &
pids+=($!)
"$target/debug/clustermesh" certs init --cluster imgtest --out "$work/tls" >/dev/null
# The image's user (65532) must read the key; certs init writes it 0600 for root.
chown -R 65532:65532 "$work/tls"

grpc=$(free_port)
health=$(free_port)
api_ctr=${ctrs[0]}
server_pattern="clustermesh-apiserver .*--health-listen 127.0.0.1:$health"
"${B[@]}" run --isolation chroot -v "$work/tls:/tls:ro" "$api_ctr" -- \
  /usr/bin/clustermesh-apiserver --cluster-name imgtest --cluster-id 9 \
  --etcd-endpoints "http://127.0.0.1:$etcd_port" --tls-dir /tls \
  --listen "127.0.0.1:$grpc" --health-listen "127.0.0.1:$health" >"$work/apiserver.log" 2>&1 &
pids+=($!)
deadline=$((SECONDS + 60))
until [ "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$health/readyz")" = 200 ]; do
  if [ $SECONDS -ge $deadline ]; then
    echo "--- apiserver log"; tail -20 "$work/apiserver.log"; echo "--- etcd log"; tail -20 "$work/etcd.log"
    fail "the apiserver image did not serve /readyz within 60 s"
  fi
  sleep 0.2
done
# The server itself (its command line starts with the binary), not the buildah run around it.
pid=$(pgrep -f -- "^/usr/bin/clustermesh-apiserver .*--health-listen 127.0.0.1:$health" | head -1)
uid=$(ps -o uid= -p "$pid" | tr -d ' ')
[ "$uid" = 65532 ] || fail "the apiserver in its image runs as uid '$uid', expected 65532"
echo "ok: the apiserver image serves /readyz against a real etcd, as uid $uid"
passed=$((passed + 1))

echo "images: $passed passed, 0 failed"
