{{/*
Names, labels and the secret wiring shared by the templates.
*/}}

{{- define "dispatchbox.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dispatchbox.fullname" -}}
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

{{- define "dispatchbox.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "dispatchbox.selectorLabels" -}}
app.kubernetes.io/name: {{ include "dispatchbox.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "dispatchbox.labels" -}}
helm.sh/chart: {{ include "dispatchbox.chart" . }}
{{ include "dispatchbox.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: relay
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "dispatchbox.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "dispatchbox.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "dispatchbox.image" -}}
{{- if .Values.image.digest }}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest }}
{{- else }}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
{{- end }}

{{/*
The Secret the relay reads: the user's existingSecret or the one this chart creates.
*/}}
{{- define "dispatchbox.secretName" -}}
{{- default (printf "%s-secrets" (include "dispatchbox.fullname" .)) .Values.secrets.existingSecret }}
{{- end }}

{{/*
The secrets passed as files, as a YAML list of {env, key, file}: the relay reads each
through its …_FILE variable. The database URL is required.
*/}}
{{- define "dispatchbox.secretFiles" -}}
{{- $s := .Values.secrets }}
{{- $files := list }}
{{- $wanted := list
      (dict "name" "databaseUrl" "env" "DISPATCHBOX_DATABASE_URL_FILE" "key" "database-url")
      (dict "name" "webhookSecret" "env" "DISPATCHBOX_WEBHOOK_SECRET_FILE" "key" "webhook-secret")
      (dict "name" "webhookHeaders" "env" "DISPATCHBOX_WEBHOOK_HEADERS_FILE" "key" "webhook-headers")
      (dict "name" "adminToken" "env" "DISPATCHBOX_ADMIN_TOKEN_FILE" "key" "admin-token")
      (dict "name" "natsToken" "env" "DISPATCHBOX_NATS_TOKEN_FILE" "key" "nats-token")
      (dict "name" "natsCreds" "env" "DISPATCHBOX_NATS_CREDS_FILE" "key" "nats-creds")
      (dict "name" "redisPassword" "env" "DISPATCHBOX_REDIS_PASSWORD_FILE" "key" "redis-password")
      (dict "name" "rabbitmqUrl" "env" "DISPATCHBOX_RABBITMQ_URL_FILE" "key" "rabbitmq-url") }}
{{- range $wanted }}
{{- $key := "" }}
{{- if $s.existingSecret }}
{{- $key = get $s.existingSecretKeys .name }}
{{- else if get $s .name }}
{{- $key = .key }}
{{- end }}
{{- if $key }}
{{- $files = append $files (dict "env" .env "key" $key "file" .key) }}
{{- else if eq .name "databaseUrl" }}
{{- fail "no database URL: set secrets.existingSecret (a Secret with the key secrets.existingSecretKeys.databaseUrl, default \"database-url\") or, for tests, secrets.databaseUrl" }}
{{- end }}
{{- end }}
{{- toYaml $files }}
{{- end }}

{{/*
Kafka properties from the Secret, as a YAML list of {env, key}.
*/}}
{{- define "dispatchbox.secretKafkaProperties" -}}
{{- $s := .Values.secrets }}
{{- $props := list }}
{{- $source := ternary $s.existingSecretKeys.kafkaProperties $s.kafkaProperties (ne $s.existingSecret "") }}
{{- range $name := keys $source | sortAlpha }}
{{- if not (regexMatch "^[A-Z0-9_]+$" $name) }}
{{- fail (printf "secrets Kafka property %q: use the upper-case name of DISPATCHBOX_KAFKA_PROPERTY_<NAME>, e.g. SASL_PASSWORD" $name) }}
{{- end }}
{{- $key := ternary (get $source $name) (printf "kafka-property-%s" ($name | lower | replace "_" "-")) (ne $s.existingSecret "") }}
{{- $props = append $props (dict "env" (printf "DISPATCHBOX_KAFKA_PROPERTY_%s" $name) "key" $key) }}
{{- end }}
{{- toYaml $props }}
{{- end }}

{{/*
The non-secret settings as strings, without empty values. Numbers are printed as whole
numbers (YAML turns 1000 into a float). Refuses secrets and the variables the chart sets.
*/}}
{{- define "dispatchbox.config" -}}
{{- $out := dict }}
{{- range $name, $value := .Values.config }}
{{- if and (regexMatch "(PASSWORD|SECRET|TOKEN|DATABASE_URL|RABBITMQ_URL|JAAS|_KEY_PEM|_KEY$)" $name) (ne $name "DISPATCHBOX_RABBITMQ_ROUTING_KEY") }}
{{- fail (printf "config.%s looks like a secret: put it in secrets (see values.yaml), never in the ConfigMap" $name) }}
{{- end }}
{{- if eq $name "DISPATCHBOX_HTTP_ADDR" }}
{{- fail "config.DISPATCHBOX_HTTP_ADDR: set httpBindAddress and containerPort instead (the probes and the Service use that port)" }}
{{- end }}
{{- $text := "" }}
{{- if kindIs "float64" $value }}
{{- $text = $value | int64 | toString }}
{{- else if not (kindIs "invalid" $value) }}
{{- $text = $value | toString }}
{{- end }}
{{- if ne $text "" }}
{{- $_ := set $out $name $text }}
{{- end }}
{{- end }}
{{- $_ := set $out "DISPATCHBOX_HTTP_ADDR" (printf "%s:%d" .Values.httpBindAddress (int .Values.containerPort)) }}
{{- toYaml $out }}
{{- end }}

{{/*
The enabled sinks, as a list.
*/}}
{{- define "dispatchbox.sinks" -}}
{{- $sinks := list }}
{{- range splitList "," (default "stdout" (toString .Values.config.DISPATCHBOX_SINKS)) }}
{{- $sinks = append $sinks (trim .) }}
{{- end }}
{{- toYaml $sinks }}
{{- end }}

{{/*
PromQL label matchers picking this release's series.
*/}}
{{- define "dispatchbox.promSelector" -}}
{{- default (printf "job=%q, namespace=%q" (include "dispatchbox.fullname" .) .Release.Namespace) .Values.prometheusRule.selector }}
{{- end }}

{{/*
The relay container's environment, mounts and envFrom (shared with the migrate init
container). Takes a dict: root, secretFiles, kafkaProperties, secretName.
*/}}
{{- define "dispatchbox.env" -}}
envFrom:
  - configMapRef:
      name: {{ include "dispatchbox.fullname" .root }}
  {{- with .root.Values.extraEnvFrom }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
env:
  {{- range .secretFiles }}
  - name: {{ .env }}
    value: {{ printf "%s/%s" $.root.Values.secrets.mountPath .file | quote }}
  {{- end }}
  {{- range .kafkaProperties }}
  - name: {{ .env }}
    valueFrom:
      secretKeyRef:
        name: {{ $.secretName }}
        key: {{ .key }}
  {{- end }}
  {{- with .root.Values.extraEnv }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
volumeMounts:
  - name: secrets
    mountPath: {{ .root.Values.secrets.mountPath }}
    readOnly: true
  - name: tmp
    mountPath: /tmp
  {{- with .root.Values.extraVolumeMounts }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
{{- end }}

{{/*
Labels and annotations of one alert. Takes a dict: root, alert (its values), name,
summary, description.
*/}}
{{- define "dispatchbox.alertMeta" -}}
labels:
  severity: {{ .alert.severity }}
  {{- with .root.Values.prometheusRule.additionalAlertLabels }}
  {{- toYaml . | nindent 2 }}
  {{- end }}
annotations:
  summary: {{ .summary | quote }}
  description: {{ .description | quote }}
  {{- with .root.Values.prometheusRule.runbookBaseUrl }}
  runbook_url: {{ printf "%s#%s" . ($.name | lower) | quote }}
  {{- end }}
{{- end }}
