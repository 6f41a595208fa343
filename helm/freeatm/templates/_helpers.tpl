{{/* Chart name. */}}
{{- define "freeatm.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Full name: release-chart, unless the release name already contains the chart name. */}}
{{- define "freeatm.fullname" -}}
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

{{- define "freeatm.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "freeatm.labels" -}}
helm.sh/chart: {{ include "freeatm.chart" . }}
app.kubernetes.io/name: {{ include "freeatm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: freeatm
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* Selector labels of the operator pod. */}}
{{- define "freeatm.operatorSelectorLabels" -}}
app.kubernetes.io/name: {{ include "freeatm.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{- define "freeatm.operatorServiceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "freeatm.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* image reference: (dict "image" .Values.x.image "root" $) */}}
{{- define "freeatm.image" -}}
{{- $repo := .image.repository }}
{{- with .root.Values.image.registry }}{{ $repo = printf "%s/%s" (trimSuffix "/" .) $repo }}{{ end }}
{{- if .image.digest }}
{{- printf "%s@%s" $repo .image.digest }}
{{- else }}
{{- printf "%s:%s" $repo (default .root.Chart.AppVersion .image.tag | toString) }}
{{- end }}
{{- end }}

{{/* Namespaces that get the runtime's ServiceAccount and Role, as a list. */}}
{{- define "freeatm.runtimeNamespaces" -}}
{{- if .Values.watchNamespaces }}
{{- toYaml (uniq .Values.watchNamespaces) }}
{{- else if .Values.runtime.namespaces }}
{{- toYaml (uniq .Values.runtime.namespaces) }}
{{- else }}
{{- toYaml (list .Release.Namespace) }}
{{- end }}
{{- end }}

{{/* The three kinds' plurals, as the RBAC resources list. */}}
{{- define "freeatm.kinds" -}}
- syntheticdatasets
- maskpretrainjobs
- evaljobs
{{- end }}

{{- define "freeatm.kindsStatus" -}}
- syntheticdatasets/status
- maskpretrainjobs/status
- evaljobs/status
{{- end }}
