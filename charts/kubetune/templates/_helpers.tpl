{{/*
The chart's name. Cut to 63 characters because most Kubernetes names are DNS
labels (RFC 1123) of at most 63 characters.
*/}}
{{- define "kubetune.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
The prefix of every object name: "<release>-kubetune", or the release name
alone when it already contains the chart name. Cut to 50 characters so that
the suffixes the templates add ("-operator", "-trainer", "-metrics") stay
within 63.
*/}}
{{- define "kubetune.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 50 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 50 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
The chart label: name and version, "+" replaced because label values may not
contain it.
*/}}
{{- define "kubetune.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Labels on every object of the chart. Kept apart from the selector labels:
selectors are immutable, so they must not contain the version.
*/}}
{{- define "kubetune.labels" -}}
helm.sh/chart: {{ include "kubetune.chart" . }}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{/*
Labels that select the chart's own pods (never the trainers).
*/}}
{{- define "kubetune.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubetune.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Labels that select the operator pod.
*/}}
{{- define "kubetune.operatorSelectorLabels" -}}
{{ include "kubetune.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/*
Labels the operator puts on every trainer pod (API.md, "Children and
contracts"): what the PodMonitor and the NetworkPolicy select.
*/}}
{{- define "kubetune.trainerSelectorLabels" -}}
app.kubernetes.io/name: kubetune
app.kubernetes.io/managed-by: kubetune-operator
app.kubernetes.io/component: trainer
{{- end -}}

{{/*
The operator's ServiceAccount name.
*/}}
{{- define "kubetune.operatorServiceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (printf "%s-operator" (include "kubetune.fullname" .)) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
The trainer pods' ServiceAccount name, the operator's default for
FineTuneJobs that set no serviceAccountName.
*/}}
{{- define "kubetune.trainerServiceAccountName" -}}
{{- if .Values.trainer.serviceAccount.create -}}
{{- default (printf "%s-trainer" (include "kubetune.fullname" .)) .Values.trainer.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.trainer.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the trainer ServiceAccount exists in every namespace the operator
serves, so the operator may default trainer pods to it: the chart creates it in
each watched namespace, or the user named an account they manage. When the
operator watches every namespace it cannot be everywhere; trainer pods then run
as their namespace's default account (never with a token mounted), or as the
FineTuneJob's spec.serviceAccountName.
*/}}
{{- define "kubetune.trainerServiceAccountEverywhere" -}}
{{- if .Values.trainer.serviceAccount.create -}}
{{- if .Values.operator.watchNamespaces }}true{{ end -}}
{{- else if .Values.trainer.serviceAccount.name -}}
true
{{- end -}}
{{- end -}}

{{/*
An image reference: repository (under global.imageRegistry when set: that
prefix and the repository's last path element, as scripts/build-images.sh
names them), then "@digest" when a digest is set, else ":tag" with the chart's
appVersion as the default tag.
Usage: {{ include "kubetune.image" (dict "image" .Values.operator.image "context" $) }}
*/}}
{{- define "kubetune.image" -}}
{{- $repository := .image.repository -}}
{{- with (.context.Values.global).imageRegistry -}}
{{- $repository = printf "%s/%s" (trimSuffix "/" .) (base $repository) -}}
{{- end -}}
{{- if .image.digest -}}
{{- printf "%s@%s" $repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" $repository (default .context.Chart.AppVersion .image.tag) -}}
{{- end -}}
{{- end -}}

{{/*
"true" when the trainer image set is the CPU variant (its tag ends in "-cpu"),
the one the CPU quickstart needs; "" otherwise (a digest cannot tell).
*/}}
{{- define "kubetune.trainerImageIsCpu" -}}
{{- if and (not .Values.trainer.image.digest) (hasSuffix "-cpu" (default .Chart.AppVersion .Values.trainer.image.tag)) -}}
true
{{- end -}}
{{- end -}}

{{/*
The fields a ServiceMonitor endpoint and a PodMonitor podMetricsEndpoint share:
interval, scrapeTimeout, relabelings and metricRelabelings from a monitor's values.
Usage: {{- include "kubetune.scrapeSettings" .Values.metrics.podMonitor | nindent 6 }}
*/}}
{{- define "kubetune.scrapeSettings" -}}
interval: {{ .interval }}
{{- with .scrapeTimeout }}
scrapeTimeout: {{ . }}
{{- end }}
{{- with .relabelings }}
relabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .metricRelabelings }}
metricRelabelings:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}

{{/*
"true" when a prometheus-operator object should be rendered: the value is
true, or "auto" and the cluster serves monitoring.coreos.com/v1; "" otherwise.
Usage: {{ include "kubetune.monitoringEnabled" (dict "enabled" .Values.metrics.podMonitor.enabled "context" $) }}
*/}}
{{- define "kubetune.monitoringEnabled" -}}
{{- if eq (toString .enabled) "true" -}}
true
{{- else if and (eq (toString .enabled) "auto") (.context.Capabilities.APIVersions.Has "monitoring.coreos.com/v1") -}}
true
{{- end -}}
{{- end -}}

{{/*
The namespaces where trainer pods run and so need the trainer ServiceAccount
(and the NetworkPolicy): the watched namespaces plus
trainer.serviceAccount.namespaces, or the release namespace when both are
empty. A JSON list; read it with fromJsonArray.
*/}}
{{- define "kubetune.trainerNamespaces" -}}
{{- $namespaces := concat .Values.operator.watchNamespaces .Values.trainer.serviceAccount.namespaces | uniq -}}
{{- if not $namespaces -}}
{{- $namespaces = list .Release.Namespace -}}
{{- end -}}
{{- toJson $namespaces -}}
{{- end -}}

{{/*
RBAC rules the operator needs in every namespace it watches: exactly the API
calls it makes (listed in operator/kubetune_operator/handlers.py; the chart
tests run the operator on an install and check its recorded requests against
these rules, and that the rules grant nothing else).
*/}}
{{- define "kubetune.operatorNamespacedRules" -}}
- apiGroups: [kubetune.io]
  resources: [finetunejobs]
  # watch: the handlers; patch: kopf's bookkeeping annotations; delete: ttlSecondsAfterFinished.
  verbs: [get, list, watch, patch, delete]
- apiGroups: [kubetune.io]
  resources: [finetunejobs/status]
  # The reconcile writes the whole status in one patch.
  verbs: [patch]
- apiGroups: [kubetune.io]
  resources: [finetunejobs/finalizers]
  # Children carry blockOwnerDeletion: where OwnerReferencesPermissionEnforcement is on
  # (OpenShift, hardened clusters) setting it needs update on the owner's finalizers.
  verbs: [update]
- apiGroups: [batch]
  resources: [jobs]
  # delete: suspend and the next attempt replace the attempt Job.
  verbs: [get, list, watch, create, delete]
- apiGroups: [""]
  resources: [pods]
  # Read through the watch (failures are classified from pod status); delete: only a pod stuck
  # Terminating on a lost node, force-deleted after operator.lostNodeTimeoutSeconds.
  verbs: [list, watch, delete]
- apiGroups: [""]
  resources: [configmaps, services]
  verbs: [get, create]
- apiGroups: [""]
  resources: [persistentvolumeclaims]
  verbs: [get, create]
- apiGroups: [""]
  resources: [events]
  # create: one Event on the FineTuneJob per transition (core v1 Events); list: the Job
  # controller's FailedCreate events tell why an attempt's pods are never created.
  verbs: [create, list]
{{- end -}}

{{/*
RBAC rules the operator needs cluster-wide when it watches every namespace:
kopf scans the CRDs to find the FineTuneJob resource and follows their changes.
With a fixed list of namespaces the operator turns kopf's scanning off
(kubetune_operator/main.py), and needs no cluster-wide rule at all.
*/}}
{{- define "kubetune.operatorClusterRules" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  verbs: [list, watch]
- apiGroups: [""]
  resources: [nodes]
  verbs: [get]
{{- end -}}
