{{/*
The pod template the stable Deployment and the canary Deployment share (probes, security
contexts, environment, resources, volumes, model repository), so the canary differs from the
stable pods in its image and selector labels only. Arguments (a dict):
  root            the chart's top-level context
  image           the image reference
  selectorLabels  the pods' selector labels (YAML), also used for anti-affinity and spreading
*/}}
{{- define "nimify.podTemplate" -}}
{{- $root := .root }}
{{- $values := $root.Values }}
{{- $repo := $values.modelRepository -}}
metadata:
  annotations:
    # A config change rolls the pods.
    checksum/config: {{ include (print $root.Template.BasePath "/configmap.yaml") $root | sha256sum }}
    {{- with $values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  labels:
    {{- .selectorLabels | nindent 4 }}
    {{- with $values.podLabels }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
spec:
  {{- with $values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  serviceAccountName: {{ include "nimify.serviceAccountName" $root }}
  automountServiceAccountToken: {{ $values.serviceAccount.automount }}
  securityContext:
    {{- toYaml $values.podSecurityContext | nindent 4 }}
  terminationGracePeriodSeconds: {{ $values.terminationGracePeriodSeconds }}
  {{- if and $repo.enabled $repo.initContainer }}
  initContainers:
    {{- include "nimify.repositoryContainer" (dict "root" $root "container" $repo.initContainer "name" "model-repository-init" "what" "initContainer") | nindent 4 }}
  {{- end }}
  containers:
    - name: {{ $root.Chart.Name }}
      image: {{ .image | quote }}
      imagePullPolicy: {{ $values.image.pullPolicy }}
      securityContext:
        {{- toYaml $values.securityContext | nindent 8 }}
      env:
        - name: NIMIFY_PORT
          value: {{ $values.containerPort | quote }}
        {{- if $values.grpc.enabled }}
        - name: NIMIFY_GRPC_PORT
          value: {{ $values.grpc.containerPort | quote }}
        {{- else }}
        - name: NIMIFY_NO_GRPC
          value: "true"
        {{- end }}
        - name: NIMIFY_CONFIG
          value: /etc/nimify/config.toml
        {{- if $values.modelCache.enabled }}
        - name: NIMIFY_CACHE_DIR
          value: /var/cache/nimify
        {{- else }}
        - name: NIMIFY_MODEL_CACHE
          value: "false"
        {{- end }}
        {{- if $values.apiKeys.existingSecret }}
        - name: NIMIFY_API_KEYS_FILE
          value: /var/run/secrets/nimify/{{ $values.apiKeys.key }}
        {{- end }}
        {{- with $values.tracing }}
        {{- if .endpoint }}
        - name: OTEL_EXPORTER_OTLP_ENDPOINT
          value: {{ .endpoint | quote }}
        - name: OTEL_EXPORTER_OTLP_PROTOCOL
          value: {{ .protocol | quote }}
        - name: OTEL_SERVICE_NAME
          value: {{ .serviceName | default (include "nimify.fullname" $root) | quote }}
        - name: OTEL_TRACES_SAMPLER
          value: {{ .sampler | quote }}
        - name: OTEL_TRACES_SAMPLER_ARG
          value: {{ .samplerArg | quote }}
        {{- if dig "tls" "secret" "" . }}
        - name: OTEL_EXPORTER_OTLP_CERTIFICATE
          value: /var/run/secrets/nimify-otlp/ca.crt
        {{- if dig "tls" "clientAuth" false . }}
        - name: OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE
          value: /var/run/secrets/nimify-otlp/tls.crt
        - name: OTEL_EXPORTER_OTLP_CLIENT_KEY
          value: /var/run/secrets/nimify-otlp/tls.key
        {{- end }}
        {{- end }}
        {{- end }}
        {{- end }}
        {{- if $values.auditLog.enabled }}
        - name: NIMIFY_AUDIT_LOG
          value: "-"
        {{- end }}
        {{- if $repo.enabled }}
        - name: NIMIFY_MODEL_REPOSITORY
          value: {{ $repo.path | quote }}
        - name: NIMIFY_MODEL_CONTROL_MODE
          value: {{ $repo.controlMode | quote }}
        - name: NIMIFY_REPOSITORY_POLL_INTERVAL_MS
          value: {{ $repo.pollIntervalMs | int64 | quote }}
        {{- end }}
        {{- with $values.env }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      ports:
        - name: http
          containerPort: {{ $values.containerPort }}
          protocol: TCP
        {{- if $values.grpc.enabled }}
        - name: grpc
          containerPort: {{ $values.grpc.containerPort }}
          protocol: TCP
        {{- end }}
      {{- if $values.probes.startup.enabled }}
      startupProbe:
        httpGet:
          path: /v2/health/live
          port: http
        periodSeconds: {{ $values.probes.startup.periodSeconds }}
        failureThreshold: {{ $values.probes.startup.failureThreshold }}
      {{- end }}
      {{- if $values.probes.readiness.enabled }}
      readinessProbe:
        httpGet:
          path: /v2/health/ready
          port: http
        periodSeconds: {{ $values.probes.readiness.periodSeconds }}
        failureThreshold: {{ $values.probes.readiness.failureThreshold }}
      {{- end }}
      {{- if $values.probes.liveness.enabled }}
      livenessProbe:
        httpGet:
          path: /v2/health/live
          port: http
        periodSeconds: {{ $values.probes.liveness.periodSeconds }}
        failureThreshold: {{ $values.probes.liveness.failureThreshold }}
      {{- end }}
      resources:
        {{- toYaml $values.resources | nindent 8 }}
      volumeMounts:
        - name: config
          mountPath: /etc/nimify
          readOnly: true
        - name: tmp
          mountPath: /tmp
        {{- if $values.modelCache.enabled }}
        - name: model-cache
          mountPath: /var/cache/nimify
        {{- end }}
        {{- if $values.apiKeys.existingSecret }}
        - name: api-keys
          mountPath: /var/run/secrets/nimify
          readOnly: true
        {{- end }}
        {{- if and $values.tracing.endpoint (dig "tls" "secret" "" $values.tracing) }}
        - name: otlp-tls
          mountPath: /var/run/secrets/nimify-otlp
          readOnly: true
        {{- end }}
        {{- if $repo.enabled }}
        # The server only reads the repository; the init container and sidecar write it.
        - name: model-repository
          mountPath: {{ $repo.path }}
          readOnly: true
        {{- end }}
    {{- if and $repo.enabled $repo.sidecar }}
    {{- include "nimify.repositoryContainer" (dict "root" $root "container" $repo.sidecar "name" "model-repository-sync" "what" "sidecar") | nindent 4 }}
    {{- end }}
  volumes:
    - name: config
      configMap:
        name: {{ include "nimify.fullname" $root }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- if $values.modelCache.enabled }}
    - name: model-cache
      {{- if $values.modelCache.sizeLimit }}
      emptyDir:
        sizeLimit: {{ $values.modelCache.sizeLimit }}
      {{- else }}
      emptyDir: {}
      {{- end }}
    {{- end }}
    {{- if $values.apiKeys.existingSecret }}
    - name: api-keys
      secret:
        secretName: {{ $values.apiKeys.existingSecret }}
    {{- end }}
    {{- if and $values.tracing.endpoint (dig "tls" "secret" "" $values.tracing) }}
    - name: otlp-tls
      secret:
        secretName: {{ $values.tracing.tls.secret }}
    {{- end }}
    {{- if $repo.enabled }}
    - name: model-repository
      {{- if $repo.volume }}
      {{- toYaml $repo.volume | nindent 6 }}
      {{- else }}
      emptyDir: {}
      {{- end }}
    {{- if or $repo.initContainer $repo.sidecar }}
    # /tmp for the init container and sidecar (their root file systems are read-only too).
    - name: model-repository-tmp
      emptyDir: {}
    {{- end }}
    {{- end }}
  {{- if eq $values.antiAffinity "hard" }}
  affinity:
    podAntiAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        - topologyKey: kubernetes.io/hostname
          labelSelector:
            matchLabels:
              {{- .selectorLabels | nindent 14 }}
  {{- else if eq $values.antiAffinity "soft" }}
  affinity:
    podAntiAffinity:
      preferredDuringSchedulingIgnoredDuringExecution:
        - weight: 100
          podAffinityTerm:
            topologyKey: kubernetes.io/hostname
            labelSelector:
              matchLabels:
                {{- .selectorLabels | nindent 16 }}
  {{- end }}
  {{- if $values.topologySpread.enabled }}
  topologySpreadConstraints:
    - maxSkew: {{ $values.topologySpread.maxSkew }}
      topologyKey: {{ $values.topologySpread.topologyKey }}
      whenUnsatisfiable: ScheduleAnyway
      labelSelector:
        matchLabels:
          {{- .selectorLabels | nindent 10 }}
  {{- end }}
  {{- with $values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with $values.tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/*
A model-repository init container or sidecar from the user's container values, completed: a
default name, the hardened securityContext (when it gives none), the repository volume mounted
read-write at modelRepository.path and /tmp on its own emptyDir. Arguments (a dict): root,
container (the values), name (the default name), what (the values key, for errors).
*/}}
{{- define "nimify.repositoryContainer" -}}
{{- $values := .root.Values }}
{{- $c := deepCopy .container }}
{{- if not $c.image }}
{{- fail (printf "modelRepository.%s has no image: give the container that fills %s, e.g. {image: amazon/aws-cli, args: [s3, sync, s3://bucket/repository, %s]}" .what $values.modelRepository.path $values.modelRepository.path) }}
{{- end }}
{{- $_ := set $c "name" (default .name $c.name) }}
{{- if not $c.securityContext }}
{{- $_ := set $c "securityContext" $values.securityContext }}
{{- end }}
{{- $mounts := default list $c.volumeMounts }}
{{- $mounts = append $mounts (dict "name" "model-repository" "mountPath" $values.modelRepository.path) }}
{{- $mounts = append $mounts (dict "name" "model-repository-tmp" "mountPath" "/tmp") }}
{{- $_ := set $c "volumeMounts" $mounts -}}
- {{ toYaml $c | indent 2 | trim }}
{{- end }}
