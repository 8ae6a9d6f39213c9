{{/* Chart name, for the app.kubernetes.io/name label. */}}
{{- define "worker.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Prefix of every resource name: "<release>-worker", or the release name if it has "worker". */}}
{{- define "worker.fullname" -}}
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

{{/* Labels that select pods; templates add app.kubernetes.io/component. */}}
{{- define "worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "worker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "worker.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "worker.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "worker.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "worker.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end }}

{{- define "worker.schedulerAddress" -}}
tcp://{{ include "worker.fullname" . }}-scheduler:8786
{{- end }}

{{/* Pod settings shared by every Deployment: service account, pull secrets, security, placement. */}}
{{- define "worker.podSpec" -}}
serviceAccountName: {{ include "worker.serviceAccountName" . }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .Values.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end }}

{{/*
Environment of the worker and of the Dask workers. Only the worker reads these settings: tasks
carry what they need to the Dask workers in their arguments. The Dask workers get them too so
that one environment describes the release. Empty names are left out: the worker then derives
them from CLUSTER_ENV.
*/}}
{{- define "worker.env" -}}
- name: CLUSTER_ENV
  value: {{ .Values.clusterEnv | quote }}
- name: AWS_DEFAULT_REGION
  value: {{ .Values.aws.region | quote }}
- name: DASK_SCHEDULER_ADDRESS
  value: {{ include "worker.schedulerAddress" . | quote }}
- name: WORKER_HEALTH_PORT
  value: "8080"
- name: WORKER_MAX_IN_FLIGHT
  value: {{ .Values.worker.maxInFlight | quote }}
{{- range $name, $value := dict
    "WORKER_QUEUE" .Values.worker.queue
    "WORKER_DEAD_LETTER_QUEUE" .Values.worker.deadLetterQueue
    "WORKER_RESULTS_TOPIC" .Values.worker.resultsTopic
    "WORKER_RESULTS_BUCKET" .Values.worker.resultsBucket
    "WORKER_PROCESSED_BUCKET" .Values.worker.processedBucket
    "WORKER_CELL_SETS_BUCKET" .Values.worker.cellSetsBucket
    "WORKER_SOURCE_BUCKETS" .Values.worker.sourceBuckets }}
{{- if $value }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The AWS credentials Secret, when one is named. */}}
{{- define "worker.envFrom" -}}
{{- with .Values.aws.existingSecret }}
envFrom:
  - secretRef:
      name: {{ . }}
{{- end }}
{{- end }}
