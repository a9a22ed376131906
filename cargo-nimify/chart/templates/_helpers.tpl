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
