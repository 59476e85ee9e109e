{{- define "strait.labels" -}}
app.kubernetes.io/name: strait
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}
{{- define "strait.selector" -}}
app.kubernetes.io/name: strait
app.kubernetes.io/component: controller
{{- end -}}
{{- define "strait.webhookSecret" -}}strait-webhook-tls{{- end -}}
{{- define "strait.svcHost" -}}strait-controller.{{ .Release.Namespace }}.svc{{- end -}}
{{- define "strait.identitySecret" -}}
{{- .Values.identity.issuer.existingSecret | default "strait-identity-issuer" -}}
{{- end -}}
