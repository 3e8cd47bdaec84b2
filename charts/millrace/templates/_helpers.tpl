{{- define "millrace.fullname" -}}
{{- if contains "millrace" .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-millrace" .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "millrace.labels" -}}
app.kubernetes.io/name: millrace-operator
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: millrace
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "millrace.selectorLabels" -}}
app.kubernetes.io/name: millrace-operator
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "millrace.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "millrace.runtimeImage" -}}
{{- printf "%s:%s" .Values.runtimeImage.repository (default .Chart.AppVersion .Values.runtimeImage.tag) -}}
{{- end -}}

{{/* What the operator needs in each namespace it serves, and no more. It can
grant the workers only permissions it holds itself (RBAC escalation rules):
reading ConfigMaps and named Secrets. */}}
{{- define "millrace.operatorRules" -}}
- apiGroups: [millrace.dev]
  resources: [streamapps]
  verbs: [get, list, watch, patch, update]
- apiGroups: [millrace.dev]
  resources: [streamapps/status]
  verbs: [get, patch, update]
- apiGroups: [millrace.dev]
  resources: [streamapps/finalizers]
  verbs: [update]
- apiGroups: [""]
  resources: [configmaps, services, serviceaccounts]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [apps]
  resources: [statefulsets]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [policy]
  resources: [poddisruptionbudgets]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, list, watch, create, patch, update, delete]
- apiGroups: [rbac.authorization.k8s.io]
  resources: [roles, rolebindings]
  verbs: [get, list, watch, create, patch, update, delete]
# Kafka credentials named by StreamApps, read for the operator's own admin
# connection and granted by name to the app's workers.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get]
- apiGroups: [""]
  resources: [pods]
  verbs: [get, list, watch]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/* crds.manageByOperator: the operator applies the CRD of its version. */}}
{{- define "millrace.crdRule" -}}
- apiGroups: [apiextensions.k8s.io]
  resources: [customresourcedefinitions]
  resourceNames: [streamapps.millrace.dev]
  verbs: [get, patch]
{{- end -}}
