{{/* The release's base name: the release name, with "-starling" unless it already says starling. */}}
{{- define "starling.fullname" -}}
{{- if contains "starling" .Release.Name -}}
{{- .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-starling" .Release.Name | trunc 40 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "starling.labels" -}}
app.kubernetes.io/name: starling
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{/* Labels that select the pods of one component: (dict "root" $ "component" "connection-manager"). */}}
{{- define "starling.selectorLabels" -}}
app.kubernetes.io/name: starling
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end -}}

{{/* Every Starling pod of the release (not the in-chart Redis and PostgreSQL). */}}
{{- define "starling.podsOfRelease" -}}
app.kubernetes.io/name: starling
app.kubernetes.io/instance: {{ .Release.Name }}
starling.im/server: "true"
{{- end -}}

{{- define "starling.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{/* The targets: their values key and their name on the command line (`--target`). */}}
{{- define "starling.targets" -}}
- {key: connectionManager, name: connection-manager}
- {key: sessionRouter, name: session-router}
- {key: presence, name: presence}
- {key: storage, name: storage}
{{- end -}}

{{- define "starling.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- .Values.serviceAccount.name | default (include "starling.fullname" .) -}}
{{- else -}}
{{- .Values.serviceAccount.name | default "default" -}}
{{- end -}}
{{- end -}}

{{- define "starling.postgresSecretName" -}}
{{- .Values.postgresql.external.existingSecret | default (printf "%s-postgresql" (include "starling.fullname" .)) -}}
{{- end -}}

{{- define "starling.postgresSecretKey" -}}
{{- if .Values.postgresql.external.existingSecret -}}{{ .Values.postgresql.external.existingSecretKey }}{{- else -}}url{{- end -}}
{{- end -}}

{{- define "starling.adminSecretName" -}}
{{- .Values.admin.existingSecret | default (printf "%s-admin" (include "starling.fullname" .)) -}}
{{- end -}}

{{- define "starling.tlsSecretName" -}}
{{- if .Values.tls.existingSecret -}}{{ .Values.tls.existingSecret }}{{- else if .Values.tls.certManager.enabled -}}{{ printf "%s-tls" (include "starling.fullname" .) }}{{- end -}}
{{- end -}}

{{/* A gRPC endpoint list of one target: every ready pod behind its headless Service, re-resolved
(dns:///), or its EndpointSlices watched (k8s:///, in the release's namespace). */}}
{{- define "starling.grpcEndpoints" -}}
{{- $scheme := ternary "k8s" "dns" .root.Values.kubernetes.endpointSlices -}}
{{- $name := printf "%s-%s" (include "starling.fullname" .root) .component -}}
{{- if .root.Values.kubernetes.endpointSlices -}}{{- $name = printf "%s.%s" $name .root.Release.Namespace -}}{{- end -}}
{{- list (printf "%s:///%s:%d" $scheme $name (int .root.Values.ports.grpc)) | toJson -}}
{{- end -}}

{{/* Whether the pods of target .target talk to the Kubernetes API ("true" or ""). */}}
{{- define "starling.usesKubernetesApi" -}}
{{- $k := .root.Values.kubernetes -}}
{{- if or (and $k.leaderElection (eq .target "session-router")) (and $k.endpointSlices (ne .target "storage")) -}}true{{- end -}}
{{- end -}}

{{/*
One TOML value. Helm reads every number of the values as a float (and
toToml would write 5 as 5.0, which an integer key refuses): a whole number
is written as an integer.
*/}}
{{- define "starling.tomlValue" -}}
{{- if kindIs "string" . -}}{{ toJson . }}
{{- else if kindIs "bool" . -}}{{ . }}
{{- else if kindIs "slice" . -}}[{{ range $i, $item := . }}{{ if $i }}, {{ end }}{{ include "starling.tomlValue" $item }}{{ end }}]
{{- else if or (kindIs "float64" .) (kindIs "int64" .) (kindIs "int" .) -}}
{{- if eq (float64 .) (float64 (int64 .)) }}{{ int64 . }}{{ else }}{{ . }}{{ end }}
{{- else -}}{{ fail (printf "config: %v cannot be written as a TOML value" .) }}
{{- end -}}
{{- end -}}

{{/* The configuration as a dict of sections: the chart's own keys over `config`. */}}
{{- define "starling.configDict" -}}
{{- $v := .Values -}}
{{- $full := include "starling.fullname" . -}}
{{- $config := deepCopy $v.config -}}
{{- $bind := $v.bindAddress -}}
{{- $listen := dict "c2s" (printf "%s:%d" $bind (int $v.ports.c2s)) "http" (printf "%s:%d" $bind (int $v.ports.http)) -}}
{{- $_ := set $listen "c2s_tls" (ternary (printf "%s:%d" $bind (int $v.ports.c2sTls)) "" (gt (int $v.ports.c2sTls) 0)) -}}
{{- $_ := set $config "listen" $listen -}}
{{- $redisUrls := $v.redis.external.urls -}}
{{- if and $v.redis.internal.enabled (not $redisUrls) (not $v.redis.external.existingSecret) -}}
{{- $redisUrls = list (printf "redis://%s-redis:6379" $full) -}}
{{- end -}}
{{- $cluster := dict "grpc" (printf "%s:%d" $bind (int $v.ports.grpc)) "redis" $redisUrls "redis_cluster" $v.redis.external.cluster "redis_key_prefix" $v.redis.keyPrefix -}}
{{- $_ := set $cluster "storage" (include "starling.grpcEndpoints" (dict "root" . "component" "storage") | fromJsonArray) -}}
{{- $_ := set $cluster "routers" (include "starling.grpcEndpoints" (dict "root" . "component" "session-router") | fromJsonArray) -}}
{{- $_ := set $cluster "presence" (include "starling.grpcEndpoints" (dict "root" . "component" "presence") | fromJsonArray) -}}
{{- $_ := set $cluster "leader_election" (ternary "kubernetes" "redis" $v.kubernetes.leaderElection) -}}
{{- $_ := set $cluster "lease_name" (printf "%s-janitor" $full) -}}
{{- $_ := set $cluster "lease_duration_secs" $v.kubernetes.leaseDurationSeconds -}}
{{- $_ := set $config "cluster" $cluster -}}
{{- $_ := set $config "drain" (dict "window_secs" $v.drain.windowSeconds) -}}
{{- if include "starling.tlsSecretName" . -}}
{{- $tls := get $config "tls" | default dict -}}
{{- $_ := set $tls "cert" "/etc/starling/tls/tls.crt" -}}
{{- $_ := set $tls "key" "/etc/starling/tls/tls.key" -}}
{{- $_ := set $config "tls" $tls -}}
{{- end -}}
{{- toJson $config -}}
{{- end -}}

{{/* The TOML file: top-level keys, then one table per section. */}}
{{- define "starling.configToml" -}}
# Rendered by the Helm chart from its values: docs/configuration.md names
# every key. Overridden per pod by STARLING_* environment variables (node id,
# storage URL, admin API).
domain = {{ .Values.domain | toJson }}
data_dir = "/var/lib/starling"
{{- $config := include "starling.configDict" . | fromJson }}
{{- range $section := keys $config | sortAlpha }}

[{{ $section }}]
{{- $table := get $config $section }}
{{- range $key := keys $table | sortAlpha }}
{{ $key }} = {{ include "starling.tomlValue" (get $table $key) }}
{{- end }}
{{- end }}
{{ end -}}
