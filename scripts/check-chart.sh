#!/usr/bin/env bash
# Checks the Helm chart with real Helm (run by .ci/run):
#  - `helm lint --strict` with each value set in helm/clustermesh/ci/;
#  - `helm template` with each, and every rendered object validated offline
#    against the Kubernetes JSON schemas of the oldest and newest Kubernetes
#    the chart supports (kubernetes-validate --strict: unknown fields fail);
#  - values that must be refused (schema or template checks) are refused.
# Tools come from scripts/install-chart-tools.sh. Exits non-zero on any error.
set -euo pipefail
cd "$(dirname "$0")/.."
bin=$(scripts/install-chart-tools.sh)
helm="$bin/helm"
chart=helm/clustermesh
# The chart's kubeVersion floor and the newest schema set kubernetes-validate ships.
versions=(1.25.0 1.37.0)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
passed=0
failed=0
ok() { echo "ok: $*"; passed=$((passed + 1)); }
bad() { echo "FAIL: $*" >&2; failed=$((failed + 1)); }

for values in "$chart"/ci/*-values.yaml; do
  set_name=$(basename "$values" -values.yaml)
  if out=$("$helm" lint --strict "$chart" -f "$values" 2>&1); then
    ok "helm lint --strict ($set_name)"
  else
    bad "helm lint --strict ($set_name):"$'\n'"$out"
  fi
  rendered="$work/$set_name.yaml"
  if ! "$helm" template cm "$chart" --namespace clustermesh -f "$values" >"$rendered" 2>"$work/err"; then
    bad "helm template ($set_name): $(cat "$work/err")"
    continue
  fi
  kinds=$(grep -c '^kind:' "$rendered" || true)
  for v in "${versions[@]}"; do
    if out=$(kubernetes-validate --strict --quiet -k "$v" "$rendered" 2>&1); then
      ok "$set_name: $kinds objects valid against Kubernetes $v schemas"
    else
      bad "$set_name against Kubernetes $v:"$'\n'"$out"
    fi
  done
done

# What each value set must render (a value set that silently drops an object is an error).
expect() {
  local set_name=$1 pattern=$2 what=$3
  if grep -qE -- "$pattern" "$work/$set_name.yaml"; then ok "$set_name renders $what"; else bad "$set_name does not render $what"; fi
}
expect_not() {
  local set_name=$1 pattern=$2 what=$3
  if grep -qE -- "$pattern" "$work/$set_name.yaml"; then bad "$set_name renders $what"; else ok "$set_name renders no $what"; fi
}
expect required '^kind: DaemonSet' "the node-agent DaemonSet"
expect required 'image: "clustermesh/clustermesh-apiserver:' "the apiserver image of scripts/build-images.sh"
expect required 'image: "clustermesh/clustermesh-node-agent:' "the node-agent image of scripts/build-images.sh"
expect ha '^kind: PodDisruptionBudget' "PodDisruptionBudgets"
expect ha '^  replicas: 3' "3 replicas"
expect ha 'initial-cluster=.*-etcd-2=' "a 3-member etcd"
expect external-etcd-tls '--etcd-ca-file=' "the etcd TLS flags"
expect_not external-etcd-tls '^kind: StatefulSet' "etcd StatefulSet"
expect_not no-agent '^kind: DaemonSet' "node-agent DaemonSet"
expect required '^kind: NetworkPolicy' "the etcd NetworkPolicy"
expect required '"--client-cert-auth=true"' "etcd with client-certificate auth"
expect ha '"--peer-client-cert-auth=true"' "etcd members with peer certificate auth"
expect_not external-etcd-tls '^kind: NetworkPolicy' "etcd NetworkPolicy for an etcd it does not run"

# Monitoring: the alert rules are valid and fire as their unit tests say, the
# PrometheusRule the chart renders holds the same valid rules, and every metric
# the rules and the dashboard query is one the binaries export (docs/metrics.md).
files="$chart/files"
if out=$(promtool check rules "$files/alerts.yaml" 2>&1) && out=$(cd "$files" && promtool test rules alerts-test.yaml 2>&1); then
  ok "alert rules: promtool check rules and test rules"
else
  bad "alert rules: $out"
fi
python3 - "$work/monitoring.yaml" "$work/rendered-rules.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
rule = [d for d in docs if d["kind"] == "PrometheusRule"]
assert len(rule) == 1, f"expected one PrometheusRule, found {len(rule)}"
yaml.safe_dump(rule[0]["spec"], open(sys.argv[2], "w"))
PY
if out=$(promtool check rules "$work/rendered-rules.yaml" 2>&1); then
  ok "the rendered PrometheusRule holds valid rules"
else
  bad "the rendered PrometheusRule: $out"
fi
if out=$(python3 scripts/check-metric-names.py "$files/alerts.yaml" "$files/dashboard.json" docs/metrics.md 2>&1); then
  ok "alerts and dashboard query only documented metrics ($out)"
else
  bad "alerts or dashboard: $out"
fi
expect monitoring '^kind: ServiceMonitor' "ServiceMonitors"
expect monitoring 'grafana_dashboard: "1"' "the dashboard ConfigMap"

# The rendered etcd TLS, run: a real etcd with the StatefulSet's arguments and
# the generated Secret, a real apiserver with the Deployment's (a no-op build
# after scripts/test.sh).
cargo build --quiet --workspace --bins
target=${CARGO_TARGET_DIR:-target}
if python3 scripts/check-chart-etcd-tls.py "$work/required.yaml" \
  "$target/debug/clustermesh-apiserver" "$target/debug/clustermesh"; then
  ok "the chart's etcd admits the apiserver's certificate only"
else
  bad "the chart's etcd TLS (scripts/check-chart-etcd-tls.py)"
fi

# Values that must be refused, each with the reason it must name.
refuse() {
  local what=$1 reason=$2
  shift 2
  if out=$("$helm" template cm "$chart" "$@" 2>&1); then
    bad "$what was rendered"
  elif grep -qF -- "$reason" <<<"$out"; then
    ok "$what is refused ($reason)"
  else
    bad "$what is refused, but the message does not say '$reason': $out"
  fi
}
refuse "no cluster.name" "cluster.name is required"
refuse "an etcd.mode that does not exist" "etcd/mode" --set cluster.name=a --set cluster.id=1 --set etcd.mode=sqlite
refuse "a 2-member etcd" "etcd/replicas" --set cluster.name=a --set cluster.id=1 --set etcd.replicas=2
refuse "a cluster ID over 511" "cluster/id" --set cluster.name=a --set cluster.id=600
refuse "a misspelt value" "additional properties" --set cluster.name=a --set cluster.id=1 --set apiserver.replica=3

echo "chart: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
