{{/* Names. */}}
{{- define "azaion.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "azaion.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{/* Cluster-scoped objects: unique per release and namespace. */}}
{{- define "azaion.clusterName" -}}
{{- printf "%s-%s" .Release.Namespace (include "azaion.fullname" .) | trunc 253 | trimSuffix "-" -}}
{{- end -}}

{{- define "azaion.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "azaion.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name: name an existing ServiceAccount when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "azaion.baseLabels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "azaion.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: azaion
{{- end -}}

{{- define "azaion.labels" -}}
{{ include "azaion.baseLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "azaion.selectorLabels" -}}
app.kubernetes.io/name: {{ include "azaion.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* An image reference from {repository, tag, digest}; the tag defaults to appVersion. */}}
{{- define "azaion.image" -}}
{{- $image := index . 0 -}}
{{- $root := index . 1 -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $image.repository $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $image.repository (default $root.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{- define "azaion.dataClaimName" -}}
{{- default .Values.data.claimName .Values.annotationConsumer.dataClaimName -}}
{{- end -}}

{{/* True when the API server knows the AnnotationConsumer kind (or helm template was told so). */}}
{{- define "azaion.consumerApiKnown" -}}
{{- if .Capabilities.APIVersions.Has "ai.azaion.com/v1alpha1/AnnotationConsumer" -}}true{{- end -}}
{{- end -}}

{{/* Checks across values that the JSON schema cannot express. */}}
{{- define "azaion.validate" -}}
{{- with .Values.annotationConsumer.disk -}}
{{- if ge (int .warnPercent) (int .criticalPercent) -}}
{{- fail (printf "annotationConsumer.disk.warnPercent (%v) must be below annotationConsumer.disk.criticalPercent (%v)" .warnPercent .criticalPercent) -}}
{{- end -}}
{{- end -}}
{{- with .Values.prometheusRule.dataVolume -}}
{{- if ge (float64 .warningPercent) (float64 .criticalPercent) -}}
{{- fail (printf "prometheusRule.dataVolume.warningPercent (%v) must be below prometheusRule.dataVolume.criticalPercent (%v)" .warningPercent .criticalPercent) -}}
{{- end -}}
{{- end -}}
{{- if eq (int .Values.operator.metricsPort) (int .Values.operator.healthPort) -}}
{{- fail "operator.metricsPort and operator.healthPort must differ" -}}
{{- end -}}
{{- end -}}
