{{/*
The resources' name: fullnameOverride, or the release name. It must be a DNS-1123 label (the
Service's name is one), as `ferroserve export kubernetes --name` requires; it is checked, not
shortened.
*/}}
{{- define "ferroserve.fullname" -}}
{{- $name := default .Release.Name .Values.fullnameOverride -}}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$" $name) -}}
{{- fail (printf "ferroserve: the name %q (fullnameOverride, or the release name) is not a DNS-1123 label: at most 63 lowercase letters, digits and '-', starting and ending with a letter or digit" $name) -}}
{{- end -}}
{{- $name -}}
{{- end -}}

{{/* helm.sh/chart: NAME-VERSION. */}}
{{- define "ferroserve.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels of every resource and of the pod template. */}}
{{- define "ferroserve.labels" -}}
{{ include "ferroserve.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ include "ferroserve.chart" . }}
{{- end -}}

{{/* The Deployment's, the Service's and the PodDisruptionBudget's selector. */}}
{{- define "ferroserve.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ include "ferroserve.fullname" . }}
{{- end -}}

{{/* The ferroserve image: image.tag, or appVersion (with -cuda when gpus > 0). */}}
{{- define "ferroserve.image" -}}
{{- $tag := toString (default "" .Values.image.tag) -}}
{{- if not $tag -}}
{{- $tag = .Chart.AppVersion -}}
{{- if gt (int .Values.gpus) 0 -}}
{{- $tag = printf "%s-cuda" $tag -}}
{{- end -}}
{{- end -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}

{{/* The securityContext of the ferroserve container and of the storage initializer. */}}
{{- define "ferroserve.containerSecurityContext" -}}
allowPrivilegeEscalation: false
readOnlyRootFilesystem: true
capabilities:
  drop:
    - ALL
{{- end -}}

{{/*
Checks of the values that values.schema.json cannot express; fails the render with a message
naming the values to set.
*/}}
{{- define "ferroserve.validate" -}}
{{- $claim := .Values.models.pvc.claimName -}}
{{- $uri := .Values.models.storageUri -}}
{{- if and (not $claim) (not $uri) -}}
{{- fail "ferroserve: no model source: set models.pvc.claimName (a PersistentVolumeClaim holding the model repository, with models.pvc.subPath for a folder in it) or models.storageUri (s3://, gs://, https://, ... copied into the pod by the storage initializer)" -}}
{{- end -}}
{{- if and $claim $uri -}}
{{- fail (printf "ferroserve: two model sources: models.pvc.claimName (%q) and models.storageUri (%q) are both set; set only one" $claim $uri) -}}
{{- end -}}
{{- if and $uri (hasPrefix "pvc://" $uri) -}}
{{- fail (printf "ferroserve: models.storageUri %q names a PersistentVolumeClaim: set models.pvc.claimName (and models.pvc.subPath) instead" $uri) -}}
{{- end -}}
{{- if and .Values.models.pvc.subPath (not $claim) -}}
{{- fail "ferroserve: models.pvc.subPath is set without models.pvc.claimName" -}}
{{- end -}}
{{- if and .Values.autoscaling.enabled (gt (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- fail (printf "ferroserve: autoscaling.minReplicas (%d) is above autoscaling.maxReplicas (%d)" (int .Values.autoscaling.minReplicas) (int .Values.autoscaling.maxReplicas)) -}}
{{- end -}}
{{- end -}}
