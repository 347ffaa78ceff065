{{/* Names and labels shared by every template. */}}

{{- define "tunewright.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "tunewright.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "tunewright.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tunewright.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "tunewright.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "tunewright.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: tunewright
{{- end -}}

{{- define "tunewright.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "tunewright.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The trainer pods' ServiceAccount; empty: their namespace's default. */}}
{{- define "tunewright.trainerServiceAccountName" -}}
{{- if .Values.trainer.serviceAccount.name -}}
{{- .Values.trainer.serviceAccount.name -}}
{{- else if and .Values.trainer.serviceAccount.create .Values.watchNamespaces -}}
{{- printf "%s-trainer" (include "tunewright.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "tunewright.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "tunewright.trainerImage" -}}
{{- printf "%s:%s" .Values.trainer.image.repository (default .Chart.AppVersion .Values.trainer.image.tag) -}}
{{- end -}}

{{/* Labels the operator puts on every trainer pod (operator/tunewright_operator; checked by a test). */}}
{{- define "tunewright.trainerPodLabels" -}}
app.kubernetes.io/name: tunewright-trainer
app.kubernetes.io/managed-by: tunewright-operator
{{- end -}}
