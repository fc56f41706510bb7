{{/* Names and labels shared by every template. */}}
{{- define "pacer.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pacer.fullname" -}}
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

{{- define "pacer.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "pacer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "pacer.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pacer.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: controller
{{- end -}}

{{- define "pacer.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pacer.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pacer.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "pacer.advertiseAddress" -}}
{{- default (printf "%s.%s.svc:%d" (include "pacer.fullname" .) .Release.Namespace (int .Values.service.grpcPort)) .Values.controller.advertiseAddress -}}
{{- end -}}

{{/* The controller's listen host; an IPv6 address in brackets (`::` -> `[::]`). */}}
{{- define "pacer.listenHost" -}}
{{- $h := .Values.controller.listenHost | default "0.0.0.0" -}}
{{- if and (contains ":" $h) (not (hasPrefix "[" $h)) -}}
{{- printf "[%s]" $h -}}
{{- else -}}
{{- $h -}}
{{- end -}}
{{- end -}}

{{- define "pacer.redisName" -}}
{{- printf "%s-redis" (include "pacer.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The Secret holding the bundled Redis's password and URL. */}}
{{- define "pacer.redisSecretName" -}}
{{- printf "%s-auth" (include "pacer.redisName" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The bundled Redis's password: redis.auth.password when given; else the one in the Secret of an
earlier release (lookup), so an upgrade never changes it under running tests; else a new one.
Renderers without cluster access (`helm template`, Argo CD) cannot look up and would make a new
one on every render: give redis.auth.password there.
*/}}
{{- define "pacer.redisPassword" -}}
{{- $password := .Values.redis.auth.password -}}
{{- if not $password -}}
{{- $password = randAlphaNum 32 -}}
{{- with lookup "v1" "Secret" .Release.Namespace (include "pacer.redisSecretName" .) -}}
{{- with .data -}}
{{- with index . "password" -}}
{{- $password = b64dec . -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- $password -}}
{{- end -}}

{{/* The namespaces worker pods run in, as a NetworkPolicy peer's namespaceSelector. */}}
{{- define "pacer.workerNamespaces" -}}
{{- if .Values.controller.watchNamespaces -}}
namespaceSelector:
  matchExpressions:
    - key: kubernetes.io/metadata.name
      operator: In
      values:
        {{- toYaml .Values.controller.watchNamespaces | nindent 8 }}
{{- else -}}
namespaceSelector: {}
{{- end -}}
{{- end -}}

{{/*
Worker pods, as the operator labels them (crates/pacer-operator/src/resources.rs: a LoadTest
cannot set these labels itself).
*/}}
{{- define "pacer.workerPods" -}}
{{ include "pacer.workerNamespaces" . }}
podSelector:
  matchLabels:
    app.kubernetes.io/name: pacer
    app.kubernetes.io/managed-by: pacer-operator
    app.kubernetes.io/component: worker
{{- end -}}

{{/*
The operator's permissions, least privilege (charts/pacer/README.md says why each is needed).
No verb on Secrets but create/delete: the controller never reads one.
*/}}
{{- define "pacer.rules" -}}
- apiGroups: ["pacer.dev"]
  resources: ["loadtests"]
  verbs: ["get", "list", "watch", "patch", "delete"]
- apiGroups: ["pacer.dev"]
  resources: ["loadtests/status"]
  verbs: ["patch"]
- apiGroups: ["pacer.dev"]
  resources: ["loadtests/finalizers"]
  verbs: ["update"]
# RateBudgets: read for the LoadTests on them; the status written; the finalizer that holds a
# budget while its tests run.
- apiGroups: ["pacer.dev"]
  resources: ["ratebudgets"]
  verbs: ["get", "list", "watch", "patch"]
- apiGroups: ["pacer.dev"]
  resources: ["ratebudgets/status"]
  verbs: ["patch"]
- apiGroups: ["pacer.dev"]
  resources: ["ratebudgets/finalizers"]
  verbs: ["update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["create", "delete"]
- apiGroups: [""]
  resources: ["secrets"]
  verbs: ["create", "delete"]
# ConfigMaps: the report written; `get` for a LoadTest's spec.planRef (its plan in a
# ConfigMap), read once when the test starts.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["list"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}
