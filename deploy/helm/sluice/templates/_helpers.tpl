{{/* The name of every object of the release. */}}
{{- define "sluice.name" -}}
{{- printf "%s-controller" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluice.labels" -}}
app.kubernetes.io/name: sluice
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
app.kubernetes.io/part-of: sluice
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "sluice.selector" -}}
app.kubernetes.io/name: sluice
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{/* The webhook configuration's name (cluster-scoped, so it carries the namespace). */}}
{{- define "sluice.webhookName" -}}
{{- printf "%s-%s-policy" .Release.Namespace .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The injector's MutatingWebhookConfiguration (cluster-scoped). */}}
{{- define "sluice.injectorName" -}}
{{- printf "%s-%s-inject" .Release.Namespace .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
