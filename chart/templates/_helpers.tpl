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

{{/*
Name of one component's resources: the prefix cut so that "<prefix>-<component>" fits the 63
characters of a Service name or a label, whatever the release name. Cutting the joined name
instead could make two components' names equal.
Call with (dict "root" $ "component" "scheduler").
*/}}
{{- define "worker.componentName" -}}
{{- $suffix := printf "-%s" .component }}
{{- include "worker.fullname" .root | trunc (int (sub 63 (len $suffix))) | trimSuffix "-" }}{{ $suffix }}
{{- end }}

{{/* Labels that select pods; templates add app.kubernetes.io/component. */}}
{{- define "worker.selectorLabels" -}}
app.kubernetes.io/name: {{ include "worker.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* Labels of every resource. */}}
{{- define "worker.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
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

{{/* The Dask scheduler the worker and the Dask workers connect to: the chart's or an external one. */}}
{{- define "worker.schedulerAddress" -}}
{{- if .Values.scheduler.enabled }}
{{- if .Values.scheduler.externalAddress }}
{{- fail "scheduler.externalAddress is for scheduler.enabled=false: set one or the other" }}
{{- end }}
{{- printf "tcp://%s:8786" (include "worker.componentName" (dict "root" . "component" "scheduler")) }}
{{- else }}
{{- required "scheduler.enabled=false needs scheduler.externalAddress (tcp://host:8786)" .Values.scheduler.externalAddress }}
{{- end }}
{{- end }}

{{/*
Pod settings shared by every Deployment: service account, pull secrets, security, and the
component's placement and extra volumes, with /tmp as an emptyDir (the root filesystem is
read-only). Call with (dict "root" $ "component" .Values.worker "volumes" (list ...)).
*/}}
{{- define "worker.podSpec" -}}
{{- $root := .root -}}
serviceAccountName: {{ include "worker.serviceAccountName" $root }}
{{- with $root.Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
securityContext:
  {{- toYaml $root.Values.podSecurityContext | nindent 2 }}
{{- with .component.nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .component.tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .component.affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
volumes:
  - name: tmp
    emptyDir:
      {{- with $root.Values.tmp.sizeLimit }}
      sizeLimit: {{ . }}
      {{- end }}
  {{- with .volumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- with .component.extraVolumes }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
Container settings shared by every container: image, security and resources, /tmp mounted,
and the component's extra environment and mounts after the chart's own; with "aws" true, the
AWS credentials Secret too, when one is named.
Call with (dict "root" $ "component" .Values.worker "env" (list ...) "mounts" (list ...) "aws" true).
*/}}
{{- define "worker.container" -}}
image: {{ include "worker.image" .root }}
imagePullPolicy: {{ .root.Values.image.pullPolicy }}
securityContext:
  {{- toYaml .root.Values.securityContext | nindent 2 }}
resources:
  {{- toYaml .component.resources | nindent 2 }}
{{- if or .env .component.extraEnv }}
env:
  {{- with .env }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- with .component.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}
{{- if and .aws .root.Values.aws.existingSecret }}
envFrom:
  - secretRef:
      name: {{ .root.Values.aws.existingSecret }}
{{- end }}
volumeMounts:
  - name: tmp
    mountPath: /tmp
  {{- with .mounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
  {{- with .component.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
Environment of the worker and of the Dask workers, as a list. Only the worker reads these
settings: tasks carry what they need to the Dask workers in their arguments. The Dask workers
get them too so that one environment describes the release. Empty queue, topic and bucket
names are left out: the worker then derives them from CLUSTER_ENV. The Redis and API URLs are
always set, empty meaning none, so that no default of another environment applies.
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
- name: WORKER_REDIS_URL
  value: {{ .Values.worker.redisUrl | quote }}
- name: WORKER_API_URL
  value: {{ .Values.worker.apiUrl | quote }}
{{- range $name, $value := dict
    "WORKER_QUEUE" .Values.worker.queue
    "WORKER_DEAD_LETTER_QUEUE" .Values.worker.deadLetterQueue
    "WORKER_RESULTS_TOPIC" .Values.worker.resultsTopic
    "WORKER_RESULTS_BUCKET" .Values.worker.resultsBucket
    "WORKER_PROCESSED_BUCKET" .Values.worker.processedBucket
    "WORKER_CELL_SETS_BUCKET" .Values.worker.cellSetsBucket
    "WORKER_SOURCE_BUCKETS" .Values.worker.sourceBuckets
    "WORKER_V2_RESULTS_BUCKET" .Values.worker.v2ResultsBucket
    "AWS_ACCOUNT_ID" .Values.aws.accountId }}
{{- if $value }}
- name: {{ $name }}
  value: {{ $value | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* Prometheus scrape annotations of a pod whose /metrics is on `port`, when asked for. */}}
{{- define "worker.scrapeAnnotations" -}}
{{- if .root.Values.metrics.prometheusScrape }}
prometheus.io/scrape: "true"
prometheus.io/port: {{ .port | quote }}
prometheus.io/path: /metrics
{{- end }}
{{- end }}

{{/*
Metrics must be let through the NetworkPolicies when Prometheus is to scrape: refuse a
configuration in which the policies would silently drop every scrape.
*/}}
{{- define "worker.checkMetricsPeers" -}}
{{- $scraped := or .Values.metrics.prometheusScrape .Values.metrics.podMonitor.enabled }}
{{- if and $scraped .Values.networkPolicy.enabled (not .Values.networkPolicy.metricsFrom) }}
{{- fail "metrics.prometheusScrape and metrics.podMonitor need networkPolicy.metricsFrom: the peers where Prometheus runs (or networkPolicy.enabled=false)" }}
{{- end }}
{{- end }}

{{/* The release's own pods of the given components, as a list of one NetworkPolicyPeer. */}}
{{- define "worker.releasePeer" -}}
- podSelector:
    matchLabels:
      {{- include "worker.selectorLabels" .root | nindent 6 }}
    matchExpressions:
      - key: app.kubernetes.io/component
        operator: In
        values: {{ toJson .components }}
{{- end }}
