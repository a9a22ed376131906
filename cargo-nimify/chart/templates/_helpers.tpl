{{/*
The chart name, or nameOverride; 63 characters at most (DNS label).
*/}}
{{- define "nimify.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The full name of every resource: fullnameOverride, else the release name when it already holds
the chart name, else "<release>-<chart>"; 63 characters at most.
*/}}
{{- define "nimify.fullname" -}}
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

{{/*
"<chart>-<version>" for the helm.sh/chart label.
*/}}
{{- define "nimify.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Labels on every resource.
*/}}
{{- define "nimify.labels" -}}
helm.sh/chart: {{ include "nimify.chart" . }}
{{ include "nimify.selectorLabels" . }}
{{- if .Chart.AppVersion }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
{{- end }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/component: inference
{{- end }}

{{/*
Labels that select the pods (never change them on upgrade: selectors are immutable).
*/}}
{{- define "nimify.selectorLabels" -}}
app.kubernetes.io/name: {{ include "nimify.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The canary's Deployment and Service name: "<fullname>-canary", 63 characters at most.
*/}}
{{- define "nimify.canaryName" -}}
{{- printf "%s-canary" (include "nimify.fullname" . | trunc 56 | trimSuffix "-") }}
{{- end }}

{{/*
Labels that select the canary's pods. The stable selector (nimify.selectorLabels) cannot change
on upgrade and matches any pod carrying its two labels, so a label added to the canary could not
keep it out of the stable Service: the canary's pods carry another instance value instead,
"<release>-canary" (Helm release names have 53 characters at most, so it fits a label value).
*/}}
{{- define "nimify.canarySelectorLabels" -}}
app.kubernetes.io/name: {{ include "nimify.name" . }}
app.kubernetes.io/instance: {{ printf "%s-canary" .Release.Name }}
{{- end }}

{{/*
Labels on the canary's Deployment and Service: the release's labels (so the ServiceMonitor
scrapes the canary Service too, and Prometheus labels its series service="<fullname>-canary")
and the track.
*/}}
{{- define "nimify.canaryLabels" -}}
{{ include "nimify.labels" . }}
nimify.io/track: canary
{{- end }}

{{/*
The canary's image: image.repository with canary.image.digest, else canary.image.tag. Unlike
the stable image there is no appVersion fallback: a canary of the stable image tests nothing.
*/}}
{{- define "nimify.canaryImage" -}}
{{- if not .Values.image.repository }}
{{- fail "image.repository is empty: run `cargo nimify image` then `cargo nimify chart`, or set image.repository" }}
{{- end }}
{{- with .Values.canary.image }}
{{- if .digest }}
{{- printf "%s@%s" $.Values.image.repository .digest }}
{{- else if .tag }}
{{- printf "%s:%s" $.Values.image.repository .tag }}
{{- else }}
{{- fail "canary.enabled needs the image to try: set canary.image.digest (sha256:..., preferred) or canary.image.tag; it runs from image.repository" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Refuses value combinations the schema cannot express, with a message saying what to set.
*/}}
{{- define "nimify.checkValues" -}}
{{- if and .Values.canary.enabled (not .Values.httpRoute.enabled) }}
{{- fail "canary.enabled needs httpRoute.enabled: without the HTTPRoute no request reaches the canary (it sends the canary canary.weight percent of them); set httpRoute.enabled=true and httpRoute.parentRefs" }}
{{- end }}
{{- if and .Values.httpRoute.enabled (not .Values.httpRoute.parentRefs) }}
{{- fail "httpRoute.enabled needs httpRoute.parentRefs: the Gateway(s) the route attaches to, e.g. [{name: gateway, namespace: infra}]" }}
{{- end }}
{{- if and .Values.canary.enabled .Values.canary.header.name (not .Values.canary.header.value) }}
{{- fail (printf "canary.header.name is %q but canary.header.value is empty: set the value requests must carry to reach the canary, or canary.header.name=\"\" for no header rule" .Values.canary.header.name) }}
{{- end }}
{{- if and .Values.rollout.enabled (not .Values.serviceMonitor.enabled) }}
{{- fail "rollout.enabled needs serviceMonitor.enabled: the Rollout's analysis queries the series the ServiceMonitor's scrape labels with the new pods' template hash; set serviceMonitor.enabled=true (and serviceMonitor.labels for your Prometheus)" }}
{{- end }}
{{- with .Values.modelRepository }}
{{- if and .enabled .sidecar (eq .controlMode "none") }}
{{- fail "modelRepository.sidecar keeps the repository in sync while serving, but controlMode none loads it once at start: set modelRepository.controlMode=poll" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
The ServiceAccount the pods use.
*/}}
{{- define "nimify.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "nimify.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The image reference: repository@digest when a digest is set, else repository:tag.
*/}}
{{- define "nimify.image" -}}
{{- if not .Values.image.repository }}
{{- fail "image.repository is empty: run `cargo nimify image` then `cargo nimify chart`, or set image.repository" }}
{{- end }}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The PromQL selector of this release's series: the namespace and service labels Prometheus adds
from the ServiceMonitor's target.
*/}}
{{- define "nimify.promSelector" -}}
namespace="{{ .Release.Namespace }}",service="{{ include "nimify.fullname" . }}"
{{- end }}

{{/*
A map as a TOML document: scalars first, then one [table] per nested map. Helm's toToml writes
every number as a float (values pass through JSON), which the service's integer keys refuse, so
whole numbers are written as integers here.
*/}}
{{- define "nimify.toml" -}}
{{- $prefix := .prefix }}
{{- range $k, $v := .table }}
{{- if not (kindIs "map" $v) }}
{{ $k }} = {{ include "nimify.tomlValue" $v }}
{{- end }}
{{- end }}
{{- range $k, $v := .table }}
{{- if kindIs "map" $v }}
{{- $name := ternary (printf "%s.%s" $prefix $k) $k (ne $prefix "") }}

[{{ $name }}]
{{- include "nimify.toml" (dict "table" $v "prefix" $name) }}
{{- end }}
{{- end }}
{{- end }}

{{/*
One TOML value.
*/}}
{{- define "nimify.tomlValue" -}}
{{- if kindIs "string" . }}{{ . | quote }}
{{- else if kindIs "bool" . }}{{ . }}
{{- else if kindIs "slice" . }}[{{ range $i, $x := . }}{{ if $i }}, {{ end }}{{ include "nimify.tomlValue" $x }}{{ end }}]
{{- else if and (kindIs "float64" .) (eq (float64 (int64 .)) .) }}{{ int64 . }}
{{- else }}{{ . }}
{{- end }}
{{- end }}
