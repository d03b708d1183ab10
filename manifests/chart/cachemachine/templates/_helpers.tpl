{{/*
Names are fixed: one release per cluster (two agents on a node would share its debug socket
and state dir), and the config's cluster.join names the gossip Service.
*/}}

{{/* Labels every object carries. */}}
{{- define "cachemachine.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "cachemachine.selectorLabels" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The agent pods' labels, which the DaemonSet, Services and NetworkPolicy select. */}}
{{- define "cachemachine.selectorLabels" -}}
app.kubernetes.io/name: cachemachine
app.kubernetes.io/component: agent
{{- end }}

{{/*
config.yaml: .Values.config, with autostart (the Python chart's JSON) applied, and the
paths and ports the DaemonSet provides set.
*/}}
{{- define "cachemachine.config" -}}
{{- $cfg := deepCopy (.Values.config | default dict) -}}
{{- if gt (len .Values.autostart) 1 -}}
{{- fail "autostart: at most one entry (one cache per release)" -}}
{{- end -}}
{{- range $name, $json := .Values.autostart -}}
{{- $auto := fromJson $json -}}
{{- if hasKey $auto "Error" -}}
{{- fail (printf "autostart.%s: not JSON: %s" $name $auto.Error) -}}
{{- end -}}
{{- $_ := set $cfg "name" ($auto.name | default $name) -}}
{{- if hasKey $auto "labels" }}{{ $_ := set $cfg "labels" $auto.labels }}{{ end -}}
{{- if hasKey $auto "repomen" }}{{ $_ := set $cfg "repomen" $auto.repomen }}{{ end -}}
{{- end -}}
{{- $agent := deepCopy (get $cfg "agent" | default dict) -}}
{{- $_ := set $agent "cri_socket" "unix:///run/containerd/containerd.sock" -}}
{{- $_ := set $agent "state_dir" "/var/lib/cachemachine" -}}
{{- $_ := set $agent "debug_socket" "/run/cachemachine/agent.sock" -}}
{{- $_ := set $cfg "agent" $agent -}}
{{- $cluster := deepCopy (get $cfg "cluster" | default dict) -}}
{{- $_ := set $cluster "bind_port" 7946 -}}
{{- $_ := set $cluster "gossip_key_file" "/etc/cachemachine/gossip/key" -}}
{{- if not (get $cluster "join") -}}
{{- $_ := set $cluster "join" (list (printf "cachemachine-gossip.%s.svc.cluster.local" .Release.Namespace)) -}}
{{- end -}}
{{- $_ := set $cfg "cluster" $cluster -}}
{{- $http := deepCopy (get $cfg "http" | default dict) -}}
{{- $_ := set $http "listen" ":8080" -}}
{{- if .Values.notifications.enabled -}}
{{- $_ := set $http "notifications_token_file" "/etc/cachemachine/notifications/token" -}}
{{- end -}}
{{- $_ := set $cfg "http" $http -}}
{{- toYaml $cfg -}}
{{- end }}
