#!/usr/bin/env python3
"""Every metric that the alert rules and the Grafana dashboard query must be
one the binaries export, as docs/metrics.md lists them (whose tables are in
turn checked against a real scrape by integration/tests/mesh_metrics.rs).

usage: check-metric-names.py ALERTS.yaml DASHBOARD.json METRICS.md
Prints the number of names checked; exits 1 naming any unknown one.
"""
import json
import re
import sys

import yaml

alerts, dashboard, doc = sys.argv[1:4]
exprs = [r["expr"] for g in yaml.safe_load(open(alerts))["groups"] for r in g["rules"]]
exprs += [t["expr"] for p in json.load(open(dashboard))["panels"] for t in p["targets"]]
names = set()
for e in exprs:
    for n in re.findall(r"\bclustermesh_[a-z_]+", e):
        names.add(re.sub(r"_(bucket|sum|count)$", "", n))
text = open(doc).read()
documented = set(re.findall(r"`(clustermesh_[a-z_]+)`", text))
documented |= {"clustermesh_apiserver_" + n for n in re.findall(r"^\| `([a-z_]+)` \|", text, re.M)}
unknown = sorted(names - documented)
if unknown:
    sys.exit(f"not in {doc}: {', '.join(unknown)}")
print(f"{len(names)} metric names")
