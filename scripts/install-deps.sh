#!/usr/bin/env bash
# Installs what clustermesh needs on a fresh Debian machine that has only the
# Rust toolchain: etcd, protoc, clang + libbpf headers for the eBPF programs,
# and the network tools the datapath tests use. Idempotent; skips apt when
# everything is present.
set -euo pipefail
need=()
have() { command -v "$1" >/dev/null 2>&1; }
have etcd || need+=(etcd-server)
have protoc || need+=(protobuf-compiler)
have clang || need+=(clang)
[ -f /usr/include/bpf/bpf_helpers.h ] || need+=(libbpf-dev)
have ip || need+=(iproute2)
have ping || need+=(iputils-ping)
have tcpdump || need+=(tcpdump)
have iperf3 || need+=(iperf3)
have nsenter || need+=(util-linux)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing: ${need[*]}"
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# Debian's etcd-server package starts a system etcd on 2379; the project never
# uses it (every test and the demo start their own on free ports).
if have systemctl && systemctl is-active --quiet etcd 2>/dev/null; then
  ${SUDO:-} systemctl stop etcd || true
fi
