{{/* Chart name, overridable. */}}
{{- define "switchboard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Resource name prefix: the release name, with the chart name unless it already contains it. */}}
{{- define "switchboard.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{- define "switchboard.controlPlane.fullname" -}}
{{- printf "%s-control-plane" (include "switchboard.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "switchboard.gateway.fullname" -}}
{{- printf "%s-gateway" (include "switchboard.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "switchboard.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "switchboard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of one component (control-plane or gateway). */}}
{{- define "switchboard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "switchboard.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{/* The Secret the control plane makes with the install's tokens. */}}
{{- define "switchboard.tokensSecret" -}}
{{- printf "%s-tokens" (include "switchboard.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Namespaces the control plane watches, comma-separated; empty: all of them.
The release namespace is always among them, where the chart's default
McpClient lives.
*/}}
{{- define "switchboard.watchNamespaces" -}}
{{- if not .Values.controlPlane.watchAllNamespaces }}
{{- append .Values.controlPlane.watchNamespaces .Release.Namespace | uniq | join "," }}
{{- end }}
{{- end }}

{{/* A replica or admin token's Secret and key (dict: root, existing, key); empty: none. */}}
{{- define "switchboard.tokenRef" -}}
{{- if .existing }}
secretKeyRef: {name: {{ .existing }}, key: token}
{{- else if .root.Values.tokens.generate }}
secretKeyRef: {name: {{ include "switchboard.tokensSecret" .root }}, key: {{ .key }}}
{{- end }}
{{- end }}

{{/* The Secret whose `ca.crt` gateways check the gRPC port by; empty: plain text. */}}
{{- define "switchboard.grpcTlsSecret" -}}
{{- if .Values.controlPlane.tls.existingSecret }}
{{- .Values.controlPlane.tls.existingSecret }}
{{- else if .Values.tokens.generate }}
{{- include "switchboard.tokensSecret" . }}
{{- end }}
{{- end }}

{{/* The names gateways dial the control plane's gRPC port by. */}}
{{- define "switchboard.controlPlane.names" -}}
{{- $svc := include "switchboard.controlPlane.fullname" . }}
{{- list $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) | join "," }}
{{- end }}

{{- define "switchboard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "switchboard.controlPlane.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "switchboard.gateway.serviceAccountName" -}}
{{- if .Values.gateway.serviceAccount.create }}
{{- default (include "switchboard.gateway.fullname" .) .Values.gateway.serviceAccount.name }}
{{- else if .Values.gateway.serviceAccount.name }}
{{- .Values.gateway.serviceAccount.name }}
{{- else if eq .Values.replicaAuth.mode "serviceAccountToken" }}
{{- fail "gateway.serviceAccount: with replicaAuth.mode serviceAccountToken the gateways need a ServiceAccount of their own (create it, or name one): every pod in the namespace runs as `default`" }}
{{- else }}
{{- "default" }}
{{- end }}
{{- end }}

{{/* Where a gateway pod's projected ServiceAccount token is mounted. */}}
{{- define "switchboard.gateway.tokenDir" -}}
/var/run/secrets/switchboard.dev/control-plane
{{- end }}

{{- define "switchboard.image" -}}
{{- printf "%s/%s:%s" .root.Values.image.registry .image.repository (default .root.Chart.AppVersion .root.Values.image.tag) }}
{{- end }}

{{/* Host names the gateway answers to: its Service's names plus extras. */}}
{{- define "switchboard.gateway.allowedHosts" -}}
{{- $svc := include "switchboard.gateway.fullname" . }}
{{- $hosts := list "localhost" "127.0.0.1" $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace) }}
{{- concat $hosts .Values.gateway.extraAllowedHosts | join "," }}
{{- end }}

{{/*
Scheduling affinity of one component (dict: root, component, values: the
component's values, multiple: whether it runs more than one pod). The
values' own `affinity` wins; otherwise several pods get anti-affinity
across nodes as `podAntiAffinity` says, so one node going away takes one
pod, not all of them.
*/}}
{{- define "switchboard.affinity" -}}
{{- if .values.affinity }}
affinity:
  {{- toYaml .values.affinity | nindent 2 }}
{{- else if and .multiple (ne .values.podAntiAffinity "none") }}
{{- $selector := include "switchboard.selectorLabels" (dict "root" .root "component" .component) }}
affinity:
  podAntiAffinity:
    {{- if eq .values.podAntiAffinity "required" }}
    requiredDuringSchedulingIgnoredDuringExecution:
      - topologyKey: kubernetes.io/hostname
        labelSelector:
          matchLabels:
            {{- $selector | nindent 12 }}
    {{- else }}
    preferredDuringSchedulingIgnoredDuringExecution:
      - weight: 100
        podAffinityTerm:
          topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- $selector | nindent 14 }}
    {{- end }}
{{- end }}
{{- end }}

{{/*
OpenTelemetry settings for either plane (after POD_NAME): the pod, its
namespace and node as resource attributes on every span, then what
otel.env adds (OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_TRACES_SAMPLER, ...).
*/}}
{{- define "switchboard.otelEnv" -}}
- name: OTEL_K8S_NAMESPACE
  valueFrom:
    fieldRef: {fieldPath: metadata.namespace}
- name: OTEL_K8S_NODE_NAME
  valueFrom:
    fieldRef: {fieldPath: spec.nodeName}
- name: OTEL_RESOURCE_ATTRIBUTES
  value: {{ printf "k8s.pod.name=$(POD_NAME),k8s.namespace.name=$(OTEL_K8S_NAMESPACE),k8s.node.name=$(OTEL_K8S_NODE_NAME)%s" (ternary (printf ",%s" .Values.otel.resourceAttributes) "" (ne .Values.otel.resourceAttributes "")) | quote }}
{{- range $name, $value := .Values.otel.env }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}
