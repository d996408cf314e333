{{- define "borough.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "borough.labels" -}}
app.kubernetes.io/part-of: borough
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "borough.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "borough.secretName" -}}
{{- if .Values.database.existingSecret -}}
{{ .Values.database.existingSecret }}
{{- else -}}
{{ include "borough.fullname" . }}-secrets
{{- end -}}
{{- end -}}

{{/* The fixed ports of each service: api port, admin port, api port name, binary. */}}
{{- define "borough.ports" -}}
gateway: {api: 8080, admin: 9460, name: http, bin: borough-gateway}
user: {api: 50051, admin: 9461, name: grpc, bin: borough-user}
query: {api: 50052, admin: 9462, name: grpc, bin: borough-query}
config: {api: 50053, admin: 9463, name: grpc, bin: borough-config}
{{- end -}}
