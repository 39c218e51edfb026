// Package deploy holds no code: it is the home of pgtrace's deployment
// artifacts (Kubernetes manifests, SigNoz and Grafana dashboards, SigNoz
// and Prometheus alert rules, the configuration docker-compose.yml mounts)
// and of the test that keeps them honest.
//
// The test (go test ./deploy/) parses every JSON and YAML file here and the
// repository's docker-compose.yml and Dockerfile, checks their structure,
// and checks that every metric, label and attribute they reference is one
// the code emits. The emitted names are derived from the code itself:
// instrument constructors and attribute keys are read from the Go sources
// with go/ast, and OpenTelemetry names are translated to Prometheus names by
// running the OpenTelemetry Prometheus exporter that export/ uses.
package deploy
