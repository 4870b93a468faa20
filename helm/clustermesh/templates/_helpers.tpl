{{/*
Chart name, truncated to the 63 characters of a DNS label.
*/}}
{{- define "clustermesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Fully qualified prefix of every resource name: "<release>-<chart>", or just
the release name when it already contains the chart name. Truncated so that
the longest derived name ("<prefix>-node-agent") stays a DNS label.
*/}}
{{- define "clustermesh.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 40 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 40 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "clustermesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Names of the components. */}}
{{- define "clustermesh.apiserver.name" -}}
{{- printf "%s-apiserver" (include "clustermesh.fullname" .) }}
{{- end }}

{{- define "clustermesh.etcd.name" -}}
{{- printf "%s-etcd" (include "clustermesh.fullname" .) }}
{{- end }}

{{- define "clustermesh.nodeAgent.name" -}}
{{- printf "%s-node-agent" (include "clustermesh.fullname" .) }}
{{- end }}

{{- define "clustermesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "clustermesh.apiserver.name" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
Common labels. Call with a dict: (dict "root" $ "component" "apiserver").
*/}}
{{- define "clustermesh.labels" -}}
helm.sh/chart: {{ include "clustermesh.chart" .root }}
{{ include "clustermesh.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: clustermesh
{{- end }}

{{- define "clustermesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "clustermesh.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/*
"repository:tag" of a component image, the tag defaulting to appVersion.
Call with (dict "image" .Values.apiserver.image "root" $).
*/}}
{{- define "clustermesh.image" -}}
{{- $tag := default .root.Chart.AppVersion .image.tag }}
{{- printf "%s:%v" .image.repository $tag }}
{{- end }}

{{/*
The apiserver Service's in-cluster DNS name. Node agents dial it, so it
must be a --san of server.crt.
*/}}
{{- define "clustermesh.apiserver.host" -}}
{{- printf "%s.%s.svc" (include "clustermesh.apiserver.name" .) .Release.Namespace }}
{{- end }}

{{- define "clustermesh.nodeAgent.apiserverAddress" -}}
{{- if .Values.nodeAgent.apiserverAddress }}
{{- .Values.nodeAgent.apiserverAddress }}
{{- else }}
{{- printf "%s:%d" (include "clustermesh.apiserver.host" .) (int .Values.apiserver.service.port) }}
{{- end }}
{{- end }}

{{/*
A socket address for the binaries' listeners: "0.0.0.0:7443", "[::]:7443".
Call with (list "0.0.0.0" 7443).
*/}}
{{- define "clustermesh.socketAddr" -}}
{{- $host := index . 0 }}
{{- $port := int (index . 1) }}
{{- if contains ":" $host }}
{{- printf "[%s]:%d" $host $port }}
{{- else }}
{{- printf "%s:%d" $host $port }}
{{- end }}
{{- end }}

{{/*
URL scheme of the embedded etcd's client and peer URLs.
*/}}
{{- define "clustermesh.etcd.scheme" -}}
{{- if .Values.etcd.tls.enabled }}https{{ else }}http{{ end }}
{{- end }}

{{/*
The Secret with the embedded etcd's certificates: etcd.tls.secretName, or the
one the chart generates (templates/etcd-tls-secret.yaml).
*/}}
{{- define "clustermesh.etcd.tlsSecretName" -}}
{{- default (printf "%s-tls" (include "clustermesh.etcd.name" .)) .Values.etcd.tls.secretName }}
{{- end }}

{{/*
Whether the apiserver presents a client certificate to etcd: the embedded etcd
with TLS, or an external etcd with etcd.external.tlsSecretName.
*/}}
{{- define "clustermesh.etcd.clientTls" -}}
{{- if eq .Values.etcd.mode "embedded" }}{{ if .Values.etcd.tls.enabled }}true{{ end }}
{{- else if .Values.etcd.external.tlsSecretName }}true{{ end }}
{{- end }}

{{/*
Comma-separated etcd endpoints: the embedded members, or etcd.external.endpoints.
*/}}
{{- define "clustermesh.etcd.endpoints" -}}
{{- if eq .Values.etcd.mode "embedded" }}
{{- $name := include "clustermesh.etcd.name" . }}
{{- $scheme := include "clustermesh.etcd.scheme" . }}
{{- $endpoints := list }}
{{- range $i := until (int .Values.etcd.replicas) }}
{{- $endpoints = append $endpoints (printf "%s://%s-%d.%s.%s.svc:%d" $scheme $name $i $name $.Release.Namespace (int $.Values.etcd.clientPort)) }}
{{- end }}
{{- join "," $endpoints }}
{{- else }}
{{- join "," .Values.etcd.external.endpoints }}
{{- end }}
{{- end }}

{{/*
etcd's --initial-cluster for the embedded members.
*/}}
{{- define "clustermesh.etcd.initialCluster" -}}
{{- $name := include "clustermesh.etcd.name" . }}
{{- $scheme := include "clustermesh.etcd.scheme" . }}
{{- $members := list }}
{{- range $i := until (int .Values.etcd.replicas) }}
{{- $members = append $members (printf "%s-%d=%s://%s-%d.%s.%s.svc:%d" $name $i $scheme $name $i $name $.Release.Namespace (int $.Values.etcd.peerPort)) }}
{{- end }}
{{- join "," $members }}
{{- end }}

{{/*
Checks of the values; renders nothing, fails the install with a message.
*/}}
{{- define "clustermesh.validate" -}}
{{- $name := required "cluster.name is required: this cluster's name (a DNS label of at most 32 characters), the same as `clustermesh certs init --cluster`" .Values.cluster.name }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,30}[a-z0-9])?$" $name) }}
{{- fail (printf "cluster.name %q is not a DNS label of at most 32 characters (lower case letters, digits and '-')" $name) }}
{{- end }}
{{- $max := int .Values.cluster.maxConnectedClusters }}
{{- if not (has $max (list 255 511)) }}
{{- fail (printf "cluster.maxConnectedClusters must be 255 or 511, not %v" .Values.cluster.maxConnectedClusters) }}
{{- end }}
{{- $id := int .Values.cluster.id }}
{{- if or (lt $id 1) (gt $id $max) }}
{{- fail (printf "cluster.id must be in 1..=%d and unique in the mesh (got %v)" $max .Values.cluster.id) }}
{{- end }}
{{- if not .Values.tls.secretName }}
{{- fail "tls.secretName is required: a Secret made from the output of `clustermesh certs init` (see the chart's README)" }}
{{- end }}
{{- if not (has .Values.apiserver.service.type (list "LoadBalancer" "NodePort" "ClusterIP")) }}
{{- fail (printf "apiserver.service.type must be LoadBalancer, NodePort or ClusterIP, not %q" .Values.apiserver.service.type) }}
{{- end }}
{{- if eq .Values.etcd.mode "embedded" }}
{{- if not (has (int .Values.etcd.replicas) (list 1 3)) }}
{{- fail (printf "etcd.replicas must be 1 or 3, not %v" .Values.etcd.replicas) }}
{{- end }}
{{- else if eq .Values.etcd.mode "external" }}
{{- if not .Values.etcd.external.endpoints }}
{{- fail "etcd.external.endpoints is required when etcd.mode is external (a list of URLs)" }}
{{- end }}
{{- else }}
{{- fail (printf "etcd.mode must be embedded or external, not %q" .Values.etcd.mode) }}
{{- end }}
{{- if .Values.nodeAgent.enabled }}
{{- if not (has .Values.nodeAgent.tunnel (list "vxlan" "geneve" "native")) }}
{{- fail (printf "nodeAgent.tunnel must be vxlan, geneve or native, not %q" .Values.nodeAgent.tunnel) }}
{{- end }}
{{- end }}
{{- end }}
