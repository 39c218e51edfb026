package deploy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"gopkg.in/yaml.v3"
)

// The five alerts of the guide, with exactly these names, in both formats.
var alertNames = []string{
	"API P95 Latency High",
	"Error Rate Spike",
	"Database Slow Queries",
	"N+1 Query Pattern Detected",
	"SLA Violation",
}

// Routes the API latency alert must and must not cover (http.route values
// as the companion middleware records them: the ServeMux pattern).
var (
	apiRoutesIn  = []string{"/customers", "/customers/{id}", "/partners/{id}/commissions", "/partners/"}
	apiRoutesOut = []string{"/healthz", "/api/customers", "/customersx", "/"}
)

// ---------------------------------------------------------------------------
// Loading.

func readJSON(t *testing.T, path string) map[string]any {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	dec := json.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&v); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		t.Fatalf("%s: trailing data after the JSON object", path)
	}
	return v
}

// readYAML decodes every document of a YAML file.
func readYAML(t *testing.T, path string) []map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	dec := yaml.NewDecoder(f)
	var docs []map[string]any
	for {
		var doc map[string]any
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if doc != nil {
			docs = append(docs, doc)
		}
	}
	if len(docs) == 0 {
		t.Fatalf("%s: no YAML documents", path)
	}
	return docs
}

// get walks maps and lists: get(v, "spec", "template", "spec") or with
// integer indexes for lists.
func get(v any, path ...any) any {
	for _, p := range path {
		switch k := p.(type) {
		case string:
			m, ok := v.(map[string]any)
			if !ok {
				return nil
			}
			v = m[k]
		case int:
			l, ok := v.([]any)
			if !ok || k >= len(l) {
				return nil
			}
			v = l[k]
		}
	}
	return v
}

func str(v any, path ...any) string {
	switch s := get(v, path...).(type) {
	case string:
		return s
	case int:
		return strconv.Itoa(s)
	case float64:
		return strconv.FormatFloat(s, 'f', -1, 64)
	case bool:
		return strconv.FormatBool(s)
	}
	return ""
}

func list(v any, path ...any) []any {
	l, _ := get(v, path...).([]any)
	return l
}

func obj(v any, path ...any) map[string]any {
	m, _ := get(v, path...).(map[string]any)
	return m
}

// deployFiles lists the data files under deploy/ by extension.
func deployFiles(t *testing.T) map[string][]string {
	t.Helper()
	files := map[string][]string{}
	err := filepath.WalkDir(".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		ext := filepath.Ext(path)
		if ext == ".yml" {
			ext = ".yaml"
		}
		files[ext] = append(files[ext], path)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// ---------------------------------------------------------------------------
// Every file.

// composeSecretFiles are the files docker-compose.yml's secrets name,
// relative to the repository root.
func composeSecretFiles(t *testing.T) map[string]bool {
	doc := readYAML(t, filepath.Join(repoRoot, "docker-compose.yml"))[0]
	files := map[string]bool{}
	for _, s := range obj(doc, "secrets") {
		if f := str(s, "file"); f != "" {
			files[filepath.ToSlash(filepath.Clean(f))] = true
		}
	}
	return files
}

// TestEveryFileParses parses every JSON and YAML file under deploy/ and the
// repository's docker-compose.yml, and refuses data files of any other kind,
// which nothing here would check.
func TestEveryFileParses(t *testing.T) {
	files := deployFiles(t)
	n := 0
	for ext, paths := range files {
		for _, p := range paths {
			switch ext {
			case ".json":
				if len(readJSON(t, p)) == 0 {
					t.Errorf("%s: empty JSON object", p)
				}
				n++
			case ".yaml":
				readYAML(t, p)
				n++
			case ".txt":
				// Secrets docker-compose.yml mounts (TestCompose checks them).
				if !composeSecretFiles(t)[filepath.ToSlash(filepath.Join("deploy", p))] {
					t.Errorf("%s: a text file under deploy/ that no compose secret names", p)
				}
			case ".go", ".md":
			default:
				t.Errorf("%s: a %s file under deploy/ is not validated by this test; teach it or move the file", p, ext)
			}
		}
	}
	readYAML(t, filepath.Join(repoRoot, "docker-compose.yml"))
	if n < 10 {
		t.Errorf("parsed only %d data files under deploy/", n)
	}
}

// ---------------------------------------------------------------------------
// Docker.

// envMap reads a compose environment, map or KEY=VALUE list.
func envMap(v any) map[string]string {
	m := map[string]string{}
	switch e := v.(type) {
	case map[string]any:
		for k, val := range e {
			m[k] = str(val)
		}
	case []any:
		for _, kv := range e {
			k, val, _ := strings.Cut(fmt.Sprint(kv), "=")
			m[k] = val
		}
	}
	return m
}

// composeDefault resolves "${VAR:-default}" to its default, as compose does
// when VAR is unset.
func composeDefault(s string) string {
	re := regexp.MustCompile(`\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}`)
	return re.ReplaceAllString(s, "$1")
}

func TestCompose(t *testing.T) {
	doc := readYAML(t, filepath.Join(repoRoot, "docker-compose.yml"))[0]
	services := obj(doc, "services")
	for _, s := range []string{"postgres", "pgtrace", "partners"} {
		if services[s] == nil {
			t.Fatalf("docker-compose.yml: no %s service", s)
		}
	}
	// An OTLP backend: a service listening on 4317 that the endpoints name.
	pg := services["pgtrace"]
	pgEnv := envMap(get(pg, "environment"))

	// postgres: healthy means pg_isready.
	if hc := fmt.Sprint(get(services, "postgres", "healthcheck", "test")); !strings.Contains(hc, "pg_isready") {
		t.Errorf("postgres healthcheck %q does not use pg_isready", hc)
	}

	// pgtrace: listens on 6432, upstream postgres:5432, waits for a healthy
	// postgres.
	if got := pgEnv["PGTRACE_UPSTREAM"]; got != "postgres:5432" {
		t.Errorf("pgtrace PGTRACE_UPSTREAM = %q, want postgres:5432", got)
	}
	if _, port, _ := net.SplitHostPort(pgEnv["PGTRACE_LISTEN"]); port != "6432" {
		t.Errorf("pgtrace PGTRACE_LISTEN = %q, want port 6432", pgEnv["PGTRACE_LISTEN"])
	}
	if !publishes(get(pg, "ports"), "6432") {
		t.Errorf("pgtrace does not publish container port 6432: %v", get(pg, "ports"))
	}
	if _, port, _ := net.SplitHostPort(pgEnv["PGTRACE_ADMIN_LISTEN"]); port == "" || !publishes(get(pg, "ports"), port) {
		t.Errorf("pgtrace does not publish its admin port (%q)", pgEnv["PGTRACE_ADMIN_LISTEN"])
	}
	// Off loopback, the admin token comes from a compose secret whose file
	// exists and that the service mounts.
	if !adminOnLoopback(pgEnv["PGTRACE_ADMIN_LISTEN"]) {
		file := pgEnv["PGTRACE_ADMIN_TOKEN_FILE"]
		name, ok := strings.CutPrefix(file, "/run/secrets/")
		switch {
		case !ok:
			t.Errorf("pgtrace PGTRACE_ADMIN_TOKEN_FILE = %q, want /run/secrets/<a compose secret> (its admin server is off loopback)", file)
		case !slices.ContainsFunc(list(pg, "secrets"), func(v any) bool { return v == name }):
			t.Errorf("pgtrace reads its admin token from %s but does not list the secret %q", file, name)
		default:
			src := str(doc, "secrets", name, "file")
			b, err := os.ReadFile(filepath.Join(repoRoot, src))
			if err != nil {
				t.Errorf("compose secret %s: %v", name, err)
			} else {
				checkTokenValue(t, "compose secret "+name, strings.TrimSpace(string(b)), false)
			}
		}
	}
	if c := str(pg, "depends_on", "postgres", "condition"); c != "service_healthy" {
		t.Errorf("pgtrace depends_on postgres condition = %q, want service_healthy", c)
	}

	// partners: DSN through pgtrace.
	partners := services["partners"]
	dsn := envMap(get(partners, "environment"))["PARTNERS_DSN"]
	u, err := url.Parse(dsn)
	if err != nil || u.Host != "pgtrace:6432" {
		t.Errorf("partners PARTNERS_DSN = %q, want host pgtrace:6432", dsn)
	}
	if addr := envMap(get(partners, "environment"))["PARTNERS_ADDR"]; !strings.HasPrefix(addr, "0.0.0.0:") {
		t.Errorf("partners PARTNERS_ADDR = %q, want 0.0.0.0:port in a container", addr)
	}

	// OTLP: both services export to a service of this file (by default).
	var backend string
	for _, s := range []string{"pgtrace", "partners"} {
		ep := composeDefault(envMap(get(services, s, "environment"))["OTEL_EXPORTER_OTLP_ENDPOINT"])
		eu, err := url.Parse(ep)
		if err != nil || eu.Hostname() == "" {
			t.Errorf("%s OTEL_EXPORTER_OTLP_ENDPOINT = %q, want a URL", s, ep)
			continue
		}
		if services[eu.Hostname()] == nil {
			t.Errorf("%s exports OTLP to %s, which is not a service of docker-compose.yml", s, eu.Host)
		}
		backend = eu.Hostname()
		if env := envMap(get(services, s, "environment")); env["OTEL_SERVICE_NAME"] == "" {
			t.Errorf("%s has no OTEL_SERVICE_NAME", s)
		}
	}
	if backend == "" || backend == "postgres" || backend == "pgtrace" || backend == "partners" {
		t.Errorf("no OTLP backend service (got %q)", backend)
	}

	// Images built from this repository use a stage of the Dockerfile, and
	// mounted files exist.
	stages := dockerStages(t)
	for name, s := range services {
		if target := str(s, "build", "target"); target != "" && !slices.Contains(stages, target) {
			t.Errorf("service %s builds target %q, not a stage of the Dockerfile (%v)", name, target, stages)
		}
		for _, v := range list(s, "volumes") {
			src, _, _ := strings.Cut(fmt.Sprint(v), ":")
			if strings.HasPrefix(src, "./") {
				if _, err := os.Stat(filepath.Join(repoRoot, src)); err != nil {
					t.Errorf("service %s mounts %s: %v", name, src, err)
				}
			}
		}
	}
	// The example service runs the partners binary the image contains.
	if ep := fmt.Sprint(get(partners, "entrypoint")); !strings.Contains(ep, "/usr/local/bin/partners") {
		t.Errorf("partners entrypoint %s does not run /usr/local/bin/partners", ep)
	}
}

// publishes reports whether a compose ports list publishes containerPort.
func publishes(ports any, containerPort string) bool {
	for _, p := range ports.([]any) {
		s := fmt.Sprint(p)
		if i := strings.LastIndex(s, ":"); i >= 0 {
			s = s[i+1:]
		}
		s, _, _ = strings.Cut(s, "/")
		if s == containerPort {
			return true
		}
	}
	return false
}

// dockerInstruction is one Dockerfile instruction with its continuation
// lines joined.
type dockerInstruction struct {
	Cmd, Args string
	Stage     int // index of the FROM it belongs to
}

func readDockerfile(t *testing.T) []dockerInstruction {
	t.Helper()
	f, err := os.Open(filepath.Join(repoRoot, "Dockerfile"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var out []dockerInstruction
	var cur strings.Builder
	stage := -1
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		cont := strings.HasSuffix(line, "\\")
		cur.WriteString(strings.TrimSuffix(line, "\\"))
		cur.WriteByte(' ')
		if cont {
			continue
		}
		cmd, args, _ := strings.Cut(strings.TrimSpace(cur.String()), " ")
		cur.Reset()
		cmd = strings.ToUpper(cmd)
		if cmd == "FROM" {
			stage++
		}
		out = append(out, dockerInstruction{Cmd: cmd, Args: strings.TrimSpace(args), Stage: stage})
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// dockerStages lists the stage names (FROM ... AS name).
func dockerStages(t *testing.T) []string {
	var names []string
	for _, in := range readDockerfile(t) {
		if in.Cmd == "FROM" {
			f := strings.Fields(in.Args)
			if len(f) == 3 && strings.EqualFold(f[1], "AS") {
				names = append(names, f[2])
			} else {
				names = append(names, "")
			}
		}
	}
	return names
}

func TestDockerfile(t *testing.T) {
	ins := readDockerfile(t)
	stages := dockerStages(t)
	if len(stages) < 2 {
		t.Fatalf("Dockerfile has %d stage(s), want a multi-stage build", len(stages))
	}
	last := len(stages) - 1
	var runtime, build []dockerInstruction
	for _, in := range ins {
		if in.Stage == last {
			runtime = append(runtime, in)
		} else {
			build = append(build, in)
		}
	}
	joined := func(l []dockerInstruction, cmd string) string {
		var b strings.Builder
		for _, in := range l {
			if in.Cmd == cmd {
				b.WriteString(in.Args + "\n")
			}
		}
		return b.String()
	}
	if env := joined(build, "ENV"); !strings.Contains(env, "CGO_ENABLED=1") {
		t.Error("the build stage does not set CGO_ENABLED=1 (pg_query_go needs cgo)")
	}
	run := joined(build, "RUN")
	for _, pkg := range []string{"./cmd/pgtrace", "./examples/partners"} {
		if !regexp.MustCompile(`go build [^&]*-trimpath[^&]*` + regexp.QuoteMeta(pkg) + `\b`).MatchString(run) {
			t.Errorf("the build stage does not `go build -trimpath ... %s`", pkg)
		}
		if _, err := os.Stat(filepath.Join(repoRoot, pkg)); err != nil {
			t.Errorf("the Dockerfile builds %s: %v", pkg, err)
		} else if m, _ := filepath.Glob(filepath.Join(repoRoot, pkg, "*.go")); len(m) == 0 {
			t.Errorf("the Dockerfile builds %s, which has no Go files yet", pkg)
		}
	}
	// COPY --from names a defined stage.
	for _, in := range runtime {
		if in.Cmd == "COPY" && strings.HasPrefix(in.Args, "--from=") {
			from := strings.Fields(strings.TrimPrefix(in.Args, "--from="))[0]
			if !slices.Contains(stages[:last], from) {
				t.Errorf("COPY --from=%s: no such build stage", from)
			}
		}
	}
	copyArgs := joined(runtime, "COPY")
	for _, bin := range []string{"pgtrace", "partners"} {
		if !strings.Contains(copyArgs, "/"+bin+" ") || !strings.Contains(copyArgs, "/usr/local/bin/") {
			t.Errorf("the runtime stage does not copy %s to /usr/local/bin/", bin)
		}
	}
	user := strings.TrimSpace(joined(runtime, "USER"))
	if u, _, _ := strings.Cut(user, ":"); u == "" || u == "root" || u == "0" {
		t.Errorf("runtime USER = %q, want a non-root user", user)
	} else if _, err := strconv.Atoi(u); err != nil {
		t.Errorf("runtime USER %q is not numeric; Kubernetes' runAsNonRoot cannot verify a name", user)
	}
	exposed := strings.Fields(joined(runtime, "EXPOSE"))
	for _, p := range []string{"6432", "9187"} {
		if !slices.Contains(exposed, p) {
			t.Errorf("the runtime stage does not EXPOSE %s (got %v)", p, exposed)
		}
	}
	env := map[string]string{}
	for _, kv := range strings.Fields(strings.ReplaceAll(joined(runtime, "ENV"), "\\", " ")) {
		k, v, _ := strings.Cut(kv, "=")
		env[k] = v
	}
	if env["PGTRACE_LISTEN"] != "0.0.0.0:6432" {
		t.Errorf("the runtime stage sets PGTRACE_LISTEN=%q, want 0.0.0.0:6432 (reachable from outside the container)", env["PGTRACE_LISTEN"])
	}
	// The image must start as it is: off loopback the admin server needs
	// a token, which an image cannot hold.
	if listenPort(env["PGTRACE_ADMIN_LISTEN"]) != 9187 || !adminOnLoopback(env["PGTRACE_ADMIN_LISTEN"]) {
		t.Errorf("the runtime stage sets PGTRACE_ADMIN_LISTEN=%q, want loopback port 9187 (no token in an image)", env["PGTRACE_ADMIN_LISTEN"])
	}
	hc := joined(runtime, "HEALTHCHECK")
	if !strings.Contains(hc, `CMD ["/usr/local/bin/pgtrace", "health"]`) {
		t.Errorf("HEALTHCHECK = %q, want CMD [\"/usr/local/bin/pgtrace\", \"health\"] (no curl in the image)", hc)
	}
	if !scanCode(t).Commands["health"] {
		t.Error("the HEALTHCHECK runs `pgtrace health`, but cmd/pgtrace has no health command (yet)")
	}
	if ep := joined(runtime, "ENTRYPOINT"); !strings.Contains(ep, "/usr/local/bin/pgtrace") {
		t.Errorf("ENTRYPOINT = %q, want /usr/local/bin/pgtrace", ep)
	}

	// .dockerignore keeps .git out of the build context but not the
	// sources.
	b, err := os.ReadFile(filepath.Join(repoRoot, ".dockerignore"))
	if err != nil {
		t.Fatal(err)
	}
	ignore := strings.Fields(string(b))
	if !slices.Contains(ignore, ".git") {
		t.Error(".dockerignore does not exclude .git")
	}
	for _, keep := range []string{"go.mod", "go.sum", "cmd", "*.go", "**/*.go", "examples", "export", "wire"} {
		if slices.Contains(ignore, keep) {
			t.Errorf(".dockerignore excludes %s, which the build needs", keep)
		}
	}
}

// ---------------------------------------------------------------------------
// Kubernetes.

// k8sEnv reads a container's env list; valueFrom entries resolve through
// the Secrets of the same file when they can.
func k8sEnv(c any, secrets map[string]map[string]any) map[string]string {
	m := map[string]string{}
	for _, e := range list(c, "env") {
		name := str(e, "name")
		if v := get(e, "value"); v != nil {
			m[name] = str(e, "value")
			continue
		}
		ref := obj(e, "valueFrom", "secretKeyRef")
		if s := secrets[str(ref, "name")]; s != nil {
			m[name] = str(s, "stringData", str(ref, "key"))
		} else {
			m[name] = "<valueFrom>"
		}
	}
	return m
}

// k8sObjects groups a manifest's documents by kind.
func k8sObjects(t *testing.T, path string) (byKind map[string][]map[string]any, secrets map[string]map[string]any) {
	byKind = map[string][]map[string]any{}
	secrets = map[string]map[string]any{}
	for _, d := range readYAML(t, path) {
		kind := str(d, "kind")
		if kind == "" || str(d, "apiVersion") == "" || str(d, "metadata", "name") == "" {
			t.Errorf("%s: a document without kind, apiVersion or metadata.name", path)
		}
		byKind[kind] = append(byKind[kind], d)
		if kind == "Secret" {
			secrets[str(d, "metadata", "name")] = d
		}
	}
	return byKind, secrets
}

// containerPort resolves a probe's or Service's port (number or name) to a
// container port number.
func containerPort(c any, port any) int {
	switch p := port.(type) {
	case int:
		return p
	case string:
		for _, cp := range list(c, "ports") {
			if str(cp, "name") == p {
				n, _ := strconv.Atoi(str(cp, "containerPort"))
				return n
			}
		}
	}
	return 0
}

func listenPort(addr string) int {
	_, p, err := net.SplitHostPort(addr)
	if err != nil {
		return 0
	}
	n, _ := strconv.Atoi(p)
	return n
}

// adminOnLoopback mirrors pgtrace's rule (cmd/pgtrace config.go): an
// admin server on any address but loopback needs an admin token, or
// pgtrace refuses to start.
func adminOnLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if strings.EqualFold(host, "localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// checkTokenValue checks an admin token as pgtrace does at start: at least
// 16 printable characters, not the placeholder. A placeholder
// (CHANGE-ME...) is what the example manifests ship: pgtrace refuses it,
// so that it cannot be deployed unchanged.
func checkTokenValue(t *testing.T, where, token string, placeholderOK bool) {
	t.Helper()
	if strings.HasPrefix(strings.ToUpper(token), "CHANGE-ME") {
		if !placeholderOK {
			t.Errorf("%s: the admin token is a placeholder", where)
		}
		return
	}
	if len(token) < 16 || strings.ContainsAny(token, " \t\n") {
		t.Errorf("%s: admin token %q: pgtrace wants at least 16 characters without spaces", where, token)
	}
}

// checkK8sAdminToken: a pgtrace container whose admin server listens off
// loopback takes its token from a Secret of the same file.
func checkK8sAdminToken(t *testing.T, where string, c any, env map[string]string, secrets map[string]map[string]any) {
	t.Helper()
	if adminOnLoopback(env["PGTRACE_ADMIN_LISTEN"]) {
		return
	}
	for _, e := range list(c, "env") {
		if str(e, "name") != "PGTRACE_ADMIN_TOKEN" {
			continue
		}
		ref := obj(e, "valueFrom", "secretKeyRef")
		if ref == nil {
			t.Errorf("%s: PGTRACE_ADMIN_TOKEN is not from a Secret (valueFrom.secretKeyRef)", where)
			return
		}
		sec := secrets[str(ref, "name")]
		if sec == nil {
			t.Errorf("%s: PGTRACE_ADMIN_TOKEN names Secret %q, not in the file", where, str(ref, "name"))
			return
		}
		checkTokenValue(t, where, str(sec, "stringData", str(ref, "key")), true)
		return
	}
	t.Errorf("%s: PGTRACE_ADMIN_LISTEN = %q is off loopback and no PGTRACE_ADMIN_TOKEN is set: pgtrace would refuse to start",
		where, env["PGTRACE_ADMIN_LISTEN"])
}

// checkPgtraceContainer checks the pgtrace container of a pod: probes on
// the admin port, OTEL env, security context, resources.
func checkPgtraceContainer(t *testing.T, where string, pod, c any, env map[string]string) {
	t.Helper()
	admin := listenPort(env["PGTRACE_ADMIN_LISTEN"])
	if admin == 0 {
		t.Errorf("%s: PGTRACE_ADMIN_LISTEN = %q, want host:port", where, env["PGTRACE_ADMIN_LISTEN"])
	}
	for probe, path := range map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz", "startupProbe": ""} {
		p := obj(c, probe)
		if p == nil {
			t.Errorf("%s: no %s", where, probe)
			continue
		}
		if got := str(p, "httpGet", "path"); path != "" && got != path {
			t.Errorf("%s: %s path = %q, want %s", where, probe, got, path)
		}
		if got := containerPort(c, get(p, "httpGet", "port")); got != admin {
			t.Errorf("%s: %s port resolves to %d, want the admin port %d", where, probe, got, admin)
		}
	}
	checkOTELEnv(t, where, env)
	checkContainerSecurity(t, where, pod, c)
}

func checkOTELEnv(t *testing.T, where string, env map[string]string) {
	t.Helper()
	if env["OTEL_SERVICE_NAME"] == "" {
		t.Errorf("%s: no OTEL_SERVICE_NAME", where)
	}
	if u, err := url.Parse(env["OTEL_EXPORTER_OTLP_ENDPOINT"]); err != nil || u.Scheme == "" || u.Host == "" {
		t.Errorf("%s: OTEL_EXPORTER_OTLP_ENDPOINT = %q, want a URL", where, env["OTEL_EXPORTER_OTLP_ENDPOINT"])
	}
	if !regexp.MustCompile(`(^|,)deployment\.environment\.name=[^,]+`).MatchString(env["OTEL_RESOURCE_ATTRIBUTES"]) {
		t.Errorf("%s: OTEL_RESOURCE_ATTRIBUTES = %q, want deployment.environment.name=...", where, env["OTEL_RESOURCE_ATTRIBUTES"])
	}
	if env["OTEL_TRACES_SAMPLER"] != "parentbased_traceidratio" {
		t.Errorf("%s: OTEL_TRACES_SAMPLER = %q, want parentbased_traceidratio", where, env["OTEL_TRACES_SAMPLER"])
	}
	if r, err := strconv.ParseFloat(env["OTEL_TRACES_SAMPLER_ARG"], 64); err != nil || r < 0 || r > 1 {
		t.Errorf("%s: OTEL_TRACES_SAMPLER_ARG = %q, want a ratio in [0, 1]", where, env["OTEL_TRACES_SAMPLER_ARG"])
	}
}

func checkContainerSecurity(t *testing.T, where string, pod, c any) {
	t.Helper()
	sc := obj(c, "securityContext")
	nonRoot := get(sc, "runAsNonRoot") == true || get(pod, "securityContext", "runAsNonRoot") == true
	if !nonRoot {
		t.Errorf("%s: runAsNonRoot is not true", where)
	}
	if get(sc, "readOnlyRootFilesystem") != true {
		t.Errorf("%s: readOnlyRootFilesystem is not true", where)
	}
	if get(sc, "allowPrivilegeEscalation") != false {
		t.Errorf("%s: allowPrivilegeEscalation is not false", where)
	}
	if !slices.ContainsFunc(list(sc, "capabilities", "drop"), func(v any) bool { return v == "ALL" }) {
		t.Errorf("%s: capabilities do not drop ALL", where)
	}
	if obj(c, "resources", "requests") == nil || obj(c, "resources", "limits") == nil {
		t.Errorf("%s: resources need requests and limits", where)
	}
}

// subset reports whether every label of sel is in labels.
func subset(sel, labels map[string]any) bool {
	if len(sel) == 0 {
		return false
	}
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return true
}

func TestKubernetesSidecar(t *testing.T) {
	path := filepath.Join("kubernetes", "sidecar.yaml")
	objs, secrets := k8sObjects(t, path)
	if len(objs["Deployment"]) != 1 {
		t.Fatalf("%s: want one Deployment, got %d", path, len(objs["Deployment"]))
	}
	d := objs["Deployment"][0]
	if !subset(obj(d, "spec", "selector", "matchLabels"), obj(d, "spec", "template", "metadata", "labels")) {
		t.Error("Deployment selector does not match the pod template's labels")
	}
	pod := obj(d, "spec", "template", "spec")
	var sidecar any
	for _, c := range list(pod, "initContainers") {
		if str(c, "name") == "pgtrace" {
			sidecar = c
		}
	}
	if sidecar == nil {
		t.Fatal("no pgtrace initContainer")
	}
	if got := str(sidecar, "restartPolicy"); got != "Always" {
		t.Errorf("pgtrace initContainer restartPolicy = %q, want Always (native sidecar)", got)
	}
	env := k8sEnv(sidecar, secrets)
	checkPgtraceContainer(t, "sidecar pgtrace", pod, sidecar, env)
	checkK8sAdminToken(t, "sidecar pgtrace", sidecar, env, secrets)
	listen := env["PGTRACE_LISTEN"]
	if listenPort(listen) != 6432 {
		t.Errorf("sidecar PGTRACE_LISTEN = %q, want port 6432", listen)
	}
	if u, err := url.Parse("tcp://" + env["PGTRACE_UPSTREAM"]); err != nil || u.Port() == "" {
		t.Errorf("sidecar PGTRACE_UPSTREAM = %q, want host:port", env["PGTRACE_UPSTREAM"])
	}

	apps := list(pod, "containers")
	if len(apps) == 0 {
		t.Fatal("no application container")
	}
	for _, c := range apps {
		where := "sidecar app " + str(c, "name")
		appEnv := k8sEnv(c, secrets)
		dsn := appEnv["PARTNERS_DSN"]
		u, err := url.Parse(dsn)
		if err != nil || u.Host != "127.0.0.1:6432" {
			t.Errorf("%s: PARTNERS_DSN = %q, want host 127.0.0.1:6432 (the sidecar)", where, dsn)
		}
		if h, _, _ := net.SplitHostPort(listen); h != "127.0.0.1" && h != "0.0.0.0" && h != "" {
			t.Errorf("sidecar listens on %q, which the app's 127.0.0.1 DSN cannot reach", listen)
		}
		checkOTELEnv(t, where, appEnv)
		checkContainerSecurity(t, where, pod, c)
	}
}

func TestKubernetesStandalone(t *testing.T) {
	path := filepath.Join("kubernetes", "standalone.yaml")
	objs, secrets := k8sObjects(t, path)
	if len(objs["Deployment"]) != 1 || len(objs["Service"]) != 1 {
		t.Fatalf("%s: want one Deployment and one Service, got %d and %d", path, len(objs["Deployment"]), len(objs["Service"]))
	}
	d, svc := objs["Deployment"][0], objs["Service"][0]
	labels := obj(d, "spec", "template", "metadata", "labels")
	if !subset(obj(d, "spec", "selector", "matchLabels"), labels) {
		t.Error("Deployment selector does not match the pod template's labels")
	}
	if !subset(obj(svc, "spec", "selector"), labels) {
		t.Error("Service selector does not match the pods")
	}
	for _, pdb := range objs["PodDisruptionBudget"] {
		if !subset(obj(pdb, "spec", "selector", "matchLabels"), labels) {
			t.Error("PodDisruptionBudget selector does not match the pods")
		}
	}
	pod := obj(d, "spec", "template", "spec")
	var c any
	for _, cc := range list(pod, "containers") {
		if str(cc, "name") == "pgtrace" {
			c = cc
		}
	}
	if c == nil {
		t.Fatal("no pgtrace container")
	}
	env := k8sEnv(c, secrets)
	checkPgtraceContainer(t, "standalone pgtrace", pod, c, env)
	checkK8sAdminToken(t, "standalone pgtrace", c, env, secrets)
	if h, _, _ := net.SplitHostPort(env["PGTRACE_LISTEN"]); h != "0.0.0.0" && h != "" {
		t.Errorf("standalone PGTRACE_LISTEN = %q: behind a Service it must listen on all interfaces", env["PGTRACE_LISTEN"])
	}
	// The Service's 6432 reaches the proxy's listen port.
	found := false
	for _, p := range list(svc, "spec", "ports") {
		if str(p, "port") == "6432" {
			found = true
			if got := containerPort(c, get(p, "targetPort")); got != listenPort(env["PGTRACE_LISTEN"]) {
				t.Errorf("Service port 6432 targets container port %d, pgtrace listens on %q", got, env["PGTRACE_LISTEN"])
			}
		}
	}
	if !found {
		t.Error("Service has no port 6432")
	}
}

// ---------------------------------------------------------------------------
// Prometheus.

func TestPrometheusRules(t *testing.T) {
	e := emittedNames(t)
	doc := readYAML(t, filepath.Join("prometheus", "alerts.yml"))[0]
	type want struct {
		forDur    string
		threshold float64
		severity  string
	}
	wants := map[string]want{
		"API P95 Latency High":       {"5m", 0.8, "warning"},
		"Error Rate Spike":           {"5m", 0.02, "warning"},
		"Database Slow Queries":      {"10m", 0.12, "warning"},
		"N+1 Query Pattern Detected": {"", 0, "warning"},
		"SLA Violation":              {"", 0, "critical"},
	}
	var names []string
	threshold := regexp.MustCompile(`>\s*([0-9.]+)\s*$`)
	for _, g := range list(doc, "groups") {
		if str(g, "name") == "" {
			t.Error("a rule group without a name")
		}
		for _, r := range list(g, "rules") {
			name := str(r, "alert")
			names = append(names, name)
			w, ok := wants[name]
			if !ok {
				continue
			}
			expr := strings.TrimSpace(str(r, "expr"))
			refs, errs := checkPromQL(e, expr)
			for _, err := range errs {
				t.Errorf("%s: %v", name, err)
			}
			if got := str(r, "for"); got != w.forDur {
				t.Errorf("%s: for = %q, want %q", name, got, w.forDur)
			}
			if got := str(r, "labels", "severity"); got != w.severity {
				t.Errorf("%s: severity = %q, want %q", name, got, w.severity)
			}
			if str(r, "annotations", "summary") == "" {
				t.Errorf("%s: no summary annotation", name)
			}
			m := threshold.FindStringSubmatch(expr)
			if m == nil {
				t.Errorf("%s: expression does not end in `> threshold`", name)
			} else if v, _ := strconv.ParseFloat(m[1], 64); v != w.threshold {
				t.Errorf("%s: threshold %v, want %v", name, v, w.threshold)
			}
			switch name {
			case "API P95 Latency High":
				checkRouteMatchers(t, name, refs)
			case "Error Rate Spike":
				checkStatusMatcher(t, name, refs)
			}
		}
	}
	sort.Strings(names)
	wantNames := slices.Sorted(slices.Values(alertNames))
	if !slices.Equal(names, wantNames) {
		t.Errorf("Prometheus alerts = %q, want exactly %q", names, wantNames)
	}
}

// checkRouteMatchers checks that the http_route matcher of the latency
// alert, compiled as Prometheus does (anchored RE2), covers exactly the
// /customers/* and /partners/* routes.
func checkRouteMatchers(t *testing.T, name string, refs promRefs) {
	t.Helper()
	var re *regexp.Regexp
	for _, m := range refs.Matchers {
		if m.Label == "http_route" && m.Op == "=~" {
			var err error
			if re, err = regexp.Compile("^(?:" + m.Value + ")$"); err != nil {
				t.Fatalf("%s: http_route regexp: %v", name, err)
			}
		}
	}
	if re == nil {
		t.Fatalf("%s: no http_route=~ matcher", name)
	}
	checkRouteRegexp(t, name, re)
}

// checkStatusMatcher checks that the error-rate alert selects 5xx
// statuses, and only those.
func checkStatusMatcher(t *testing.T, name string, refs promRefs) {
	t.Helper()
	for _, m := range refs.Matchers {
		if m.Label == "http_response_status_code" && m.Op == "=~" {
			re, err := regexp.Compile("^(?:" + m.Value + ")$")
			if err != nil {
				t.Fatalf("%s: %v", name, err)
			}
			checkStatusRegexp(t, name, re)
			return
		}
	}
	t.Errorf("%s: no http_response_status_code=~ matcher", name)
}

func checkStatusRegexp(t *testing.T, name string, re *regexp.Regexp) {
	t.Helper()
	for _, c := range []string{"500", "502", "503", "599"} {
		if !re.MatchString(c) {
			t.Errorf("%s: status %s not selected by %s", name, c, re)
		}
	}
	for _, c := range []string{"200", "404", "429", "1500", "50"} {
		if re.MatchString(c) {
			t.Errorf("%s: status %s wrongly selected by %s", name, c, re)
		}
	}
}

func checkRouteRegexp(t *testing.T, name string, re *regexp.Regexp) {
	t.Helper()
	for _, r := range apiRoutesIn {
		if !re.MatchString(r) {
			t.Errorf("%s: route %s is not covered by %s", name, r, re)
		}
	}
	for _, r := range apiRoutesOut {
		if re.MatchString(r) {
			t.Errorf("%s: route %s is wrongly covered by %s", name, r, re)
		}
	}
}

func TestPrometheusConfig(t *testing.T) {
	// The example: scrapes pgtrace's admin port and loads the rules next
	// to it.
	doc := readYAML(t, filepath.Join("prometheus", "prometheus.yml"))[0]
	for _, f := range list(doc, "rule_files") {
		if _, err := os.Stat(filepath.Join("prometheus", fmt.Sprint(f))); err != nil {
			t.Errorf("prometheus.yml rule_files: %v", err)
		}
	}
	found := false
	for _, sc := range list(doc, "scrape_configs") {
		for _, sc2 := range list(sc, "static_configs") {
			for _, tgt := range list(sc2, "targets") {
				if listenPort(fmt.Sprint(tgt)) == 9187 && str(sc, "metrics_path") == "/metrics" {
					found = true
				}
			}
		}
		// pgtrace off loopback asks for its admin token on /metrics.
		if strings.HasPrefix(str(sc, "job_name"), "pgtrace") {
			if str(sc, "authorization", "type") != "Bearer" || str(sc, "authorization", "credentials_file") == "" {
				t.Errorf("prometheus.yml job %s sends no Bearer admin token (authorization.credentials_file)", str(sc, "job_name"))
			}
		}
	}
	if !found {
		t.Error("prometheus.yml does not scrape pgtrace's /metrics on port 9187")
	}

	// The compose configuration: loads the rules compose mounts.
	compose := readYAML(t, filepath.Join(repoRoot, "docker-compose.yml"))[0]
	mounts := map[string]string{}
	for _, v := range list(compose, "services", "prometheus", "volumes") {
		parts := strings.Split(fmt.Sprint(v), ":")
		if len(parts) >= 2 {
			mounts[parts[1]] = parts[0]
		}
	}
	cdoc := readYAML(t, filepath.Join("compose", "prometheus.yml"))[0]
	for _, f := range list(cdoc, "rule_files") {
		if mounts[fmt.Sprint(f)] != "./deploy/prometheus/alerts.yml" {
			t.Errorf("compose prometheus.yml loads %v, which docker-compose.yml does not mount from deploy/prometheus/alerts.yml", f)
		}
	}
}

// ---------------------------------------------------------------------------
// SigNoz.

// signozMetric checks one metric name used in a SigNoz query.
func signozMetric(e emitted, name string) error {
	if _, ok := e.SigNoz[name]; !ok {
		return fmt.Errorf("metric %s is not emitted by the code", name)
	}
	return nil
}

func signozAttribute(e emitted, key string) error {
	if !e.Attributes[key] {
		return fmt.Errorf("attribute %s is not set by the code", key)
	}
	return nil
}

func TestSigNozAlerts(t *testing.T) {
	e := emittedNames(t)
	paths, _ := filepath.Glob(filepath.Join("signoz", "alerts", "*.json"))
	type want struct {
		window, match string
		target        float64
		unit          string
		severity      string
	}
	wants := map[string]want{
		"API P95 Latency High":       {"5m0s", "2", 800, "ms", "warning"},
		"Error Rate Spike":           {"5m0s", "2", 2, "percent", "warning"},
		"Database Slow Queries":      {"10m0s", "2", 120, "ms", "warning"},
		"N+1 Query Pattern Detected": {"5m0s", "1", 0, "none", "warning"},
		"SLA Violation":              {"5m0s", "1", 0, "none", "critical"},
	}
	var names []string
	for _, p := range paths {
		a := readJSON(t, p)
		name := str(a, "alert")
		names = append(names, name)
		for k, v := range map[string]string{"alertType": "METRIC_BASED_ALERT", "ruleType": "threshold_rule", "version": "v5"} {
			if str(a, k) != v {
				t.Errorf("%s: %s = %q, want %q", p, k, str(a, k), v)
			}
		}
		cond := obj(a, "condition")
		w := wants[name]
		if got := str(a, "evalWindow"); got != w.window {
			t.Errorf("%s: evalWindow = %q, want %q", p, got, w.window)
		}
		if got := str(cond, "matchType"); got != w.match {
			t.Errorf("%s: matchType = %q, want %q", p, got, w.match)
		}
		if got := str(cond, "op"); got != "1" {
			t.Errorf("%s: op = %q, want 1 (above)", p, got)
		}
		if got, _ := get(cond, "target").(float64); got != w.target || str(cond, "targetUnit") != w.unit {
			t.Errorf("%s: target %v %s, want %v %s", p, got, str(cond, "targetUnit"), w.target, w.unit)
		}
		if got := str(a, "labels", "severity"); got != w.severity {
			t.Errorf("%s: severity = %q, want %q", p, got, w.severity)
		}
		queries := map[string]bool{}
		for _, q := range list(cond, "compositeQuery", "queries") {
			spec := obj(q, "spec")
			queries[str(spec, "name")] = true
			switch str(q, "type") {
			case "builder_query":
				if str(spec, "signal") != "metrics" {
					t.Errorf("%s: query %s signal = %q, want metrics", p, str(spec, "name"), str(spec, "signal"))
				}
				aggs := list(spec, "aggregations")
				if len(aggs) == 0 {
					t.Errorf("%s: query %s has no aggregations", p, str(spec, "name"))
				}
				for _, ag := range aggs {
					if err := signozMetric(e, str(ag, "metricName")); err != nil {
						t.Errorf("%s: %v", p, err)
					}
				}
				checkSigNozKeys(t, e, p, str(spec, "filter", "expression"), list(spec, "groupBy"), "name")
				switch f := str(spec, "filter", "expression"); {
				case name == "API P95 Latency High":
					checkSigNozRouteFilter(t, p, f)
				case name == "Error Rate Spike" && str(spec, "name") == "A":
					m := regexp.MustCompile(`http\.response\.status_code\s+REGEXP\s+'([^']*)'`).FindStringSubmatch(f)
					if m == nil {
						t.Errorf("%s: query A does not select 5xx with a REGEXP on http.response.status_code: %q", p, f)
					} else if re, err := regexp.Compile(m[1]); err != nil {
						t.Errorf("%s: %v", p, err)
					} else {
						checkStatusRegexp(t, p, re)
					}
				}
			case "builder_formula":
				for _, ref := range regexp.MustCompile(`[A-Z]\w*`).FindAllString(str(spec, "expression"), -1) {
					if !queries[ref] {
						t.Errorf("%s: formula %s references unknown query %s", p, str(spec, "name"), ref)
					}
				}
			default:
				t.Errorf("%s: query type %q", p, str(q, "type"))
			}
		}
		if sel := str(cond, "selectedQueryName"); !queries[sel] {
			t.Errorf("%s: selectedQueryName %q is not a query of the rule", p, sel)
		}
	}
	sort.Strings(names)
	wantNames := slices.Sorted(slices.Values(alertNames))
	if !slices.Equal(names, wantNames) {
		t.Errorf("SigNoz alerts = %q, want exactly %q", names, wantNames)
	}
}

// checkSigNozRouteFilter checks the REGEXP on http.route of the latency
// alert (SigNoz matches with ClickHouse's match(), RE2, unanchored).
func checkSigNozRouteFilter(t *testing.T, where, filter string) {
	t.Helper()
	m := regexp.MustCompile(`http\.route\s+REGEXP\s+'([^']*)'`).FindStringSubmatch(filter)
	if m == nil {
		t.Errorf("%s: no http.route REGEXP filter in %q", where, filter)
		return
	}
	re, err := regexp.Compile(m[1])
	if err != nil {
		t.Fatalf("%s: %v", where, err)
	}
	checkRouteRegexp(t, where, re)
}

// checkSigNozKeys checks the attribute keys of a filter expression and a
// groupBy list (whose entries name the key in field keyField).
func checkSigNozKeys(t *testing.T, e emitted, where, filter string, groupBy []any, keyField string) {
	t.Helper()
	keys, err := signozFilterKeys(filter)
	if err != nil {
		t.Errorf("%s: %v", where, err)
	}
	for _, g := range groupBy {
		keys = append(keys, str(g, keyField))
	}
	for _, k := range keys {
		if err := signozAttribute(e, k); err != nil {
			t.Errorf("%s: %v", where, err)
		}
	}
}

// signozDashboard summarizes what a dashboard's queries use.
type signozDashboard struct {
	Metrics  map[string]bool // metric names
	GroupBy  map[string]int  // attribute key → number of queries grouping by it
	Space    map[string]bool // "metric/spaceAggregation/groupKey"
	Panels   map[string]int  // panel type → count
	Formulas int
}

func readSigNozDashboard(t *testing.T, e emitted, path string) signozDashboard {
	t.Helper()
	d := readJSON(t, path)
	s := signozDashboard{Metrics: map[string]bool{}, GroupBy: map[string]int{}, Space: map[string]bool{}, Panels: map[string]int{}}
	if str(d, "title") == "" {
		t.Errorf("%s: no title", path)
	}
	widgets := list(d, "widgets")
	if len(widgets) < 4 {
		t.Errorf("%s: %d widgets, want at least 4", path, len(widgets))
	}
	layout := map[string]bool{}
	for _, l := range list(d, "layout") {
		layout[str(l, "i")] = true
		if w, _ := get(l, "w").(float64); w <= 0 || w > 12 {
			t.Errorf("%s: layout %s width %v outside 1..12", path, str(l, "i"), w)
		}
	}
	ids := map[string]bool{}
	for _, w := range widgets {
		id, title := str(w, "id"), str(w, "title")
		where := fmt.Sprintf("%s: widget %q", path, title)
		if ids[id] {
			t.Errorf("%s: duplicate id %s", where, id)
		}
		ids[id] = true
		if !layout[id] {
			t.Errorf("%s: no layout entry", where)
		}
		if title == "" {
			t.Errorf("%s: widget %s has no title", path, id)
		}
		s.Panels[str(w, "panelTypes")]++
		if qt := str(w, "query", "queryType"); qt != "builder" {
			t.Errorf("%s: queryType %q, want builder", where, qt)
		}
		qd := list(w, "query", "builder", "queryData")
		if len(qd) == 0 {
			t.Errorf("%s: no queries", where)
		}
		names := map[string]bool{}
		for _, q := range qd {
			names[str(q, "queryName")] = true
			switch ds := str(q, "dataSource"); ds {
			case "metrics":
				aggs := list(q, "aggregations")
				if len(aggs) != 1 {
					t.Errorf("%s: query %s has %d aggregations, want 1", where, str(q, "queryName"), len(aggs))
					continue
				}
				metric := str(aggs[0], "metricName")
				if err := signozMetric(e, metric); err != nil {
					t.Errorf("%s: %v", where, err)
				}
				if k := str(q, "aggregateAttribute", "key"); k != "" && k != metric {
					t.Errorf("%s: aggregateAttribute %s disagrees with aggregations' %s", where, k, metric)
				}
				s.Metrics[metric] = true
				checkSigNozKeys(t, e, where, str(q, "filter", "expression"), list(q, "groupBy"), "key")
				for _, g := range list(q, "groupBy") {
					s.GroupBy[str(g, "key")]++
					s.Space[metric+"/"+str(aggs[0], "spaceAggregation")+"/"+str(g, "key")] = true
				}
			case "traces":
				checkSigNozKeys(t, e, where, str(q, "filter", "expression"), nil, "")
				if str(w, "panelTypes") == "list" && len(list(q, "selectColumns")) == 0 {
					t.Errorf("%s: list panel without selectColumns (the SigNoz editor crashes)", where)
				}
				for _, c := range list(q, "selectColumns") {
					if err := signozAttribute(e, str(c, "name")); err != nil {
						t.Errorf("%s: %v", where, err)
					}
				}
			default:
				t.Errorf("%s: dataSource %q", where, ds)
			}
		}
		for _, f := range list(w, "query", "builder", "queryFormulas") {
			s.Formulas++
			for _, ref := range regexp.MustCompile(`[A-Z]\w*`).FindAllString(str(f, "expression"), -1) {
				if !names[ref] {
					t.Errorf("%s: formula references unknown query %s", where, ref)
				}
			}
		}
	}
	if len(layout) != len(ids) {
		t.Errorf("%s: %d layout entries for %d widgets", path, len(layout), len(ids))
	}
	return s
}

func TestSigNozDashboards(t *testing.T) {
	e := emittedNames(t)
	dir := filepath.Join("signoz", "dashboards")
	dash := func(name string) signozDashboard { return readSigNozDashboard(t, e, filepath.Join(dir, name)) }

	t.Run("overview", func(t *testing.T) {
		d := dash("pgtrace-overview.json")
		for _, p := range []string{"p50", "p90", "p99"} {
			if !d.Space["db.client.operation.duration/"+p+"/db.query.summary"] {
				t.Errorf("no %s of db.client.operation.duration by db.query.summary", p)
			}
		}
		for _, m := range []string{"db.client.operation.duration.count", "db.client.connection.count", "http.server.request.duration",
			// The pool row.
			"db.client.connection.wait_time", "db.client.connection.pending_requests", "db.client.connection.timeouts"} {
			if !d.Metrics[m] {
				t.Errorf("no widget over %s", m)
			}
		}
		if d.GroupBy["db.client.connection.pool.name"] < 4 {
			t.Errorf("%d queries by db.client.connection.pool.name, want the pool row's", d.GroupBy["db.client.connection.pool.name"])
		}
		if d.GroupBy["db.response.status_code"] == 0 {
			t.Error("no errors by db.response.status_code")
		}
		if d.Panels["table"] == 0 {
			t.Error("no table of top slow statements")
		}
	})
	t.Run("findings", func(t *testing.T) {
		d := dash("pgtrace-findings.json")
		for _, m := range []string{"pgtrace.slow_queries", "db.n_plus_one.detected"} {
			if !d.Metrics[m] {
				t.Errorf("no widget over %s", m)
			}
		}
		if d.Panels["list"] < 2 {
			t.Error("want span lists of slow and N+1 statements")
		}
	})
	t.Run("tenants", func(t *testing.T) {
		d := dash("pgtrace-tenants.json")
		for _, m := range []string{"dotmac.tenant.requests", "dotmac.tenant.errors", "http.server.request.duration", "db.client.operation.duration"} {
			if !d.Metrics[m] {
				t.Errorf("no widget over %s", m)
			}
		}
		if d.GroupBy["tenant.id"] < 5 {
			t.Errorf("%d queries by tenant.id, want rate, errors and latency per tenant", d.GroupBy["tenant.id"])
		}
		if d.Formulas == 0 {
			t.Error("no error-rate formula")
		}
	})
	t.Run("business", func(t *testing.T) {
		d := dash("pgtrace-business.json")
		for _, m := range []string{"dotmac.partner.signups", "dotmac.customer.acquisitions", "dotmac.commission.amount.sum", "dotmac.revenue.attributed"} {
			if !d.Metrics[m] {
				t.Errorf("no widget over %s", m)
			}
		}
		if d.GroupBy["partner.id"] < 3 {
			t.Errorf("%d queries by partner.id, want acquisitions, commissions and revenue by partner", d.GroupBy["partner.id"])
		}
	})
	paths, _ := filepath.Glob(filepath.Join(dir, "*.json"))
	if len(paths) != 4 {
		t.Errorf("%d SigNoz dashboards, want 4", len(paths))
	}
}

// ---------------------------------------------------------------------------
// Grafana.

func TestGrafanaDashboard(t *testing.T) {
	e := emittedNames(t)
	path := filepath.Join("grafana", "pgtrace.json")
	d := readJSON(t, path)
	if str(d, "uid") == "" || str(d, "title") == "" {
		t.Error("dashboard needs a uid and a title")
	}
	vars := map[string]bool{}
	for _, v := range list(d, "templating", "list") {
		vars[str(v, "name")] = true
		if q := str(v, "definition"); q != "" {
			inner := regexp.MustCompile(`label_values\(([^,]+),\s*(\w+)\)`).FindStringSubmatch(q)
			if inner == nil {
				t.Errorf("variable %s: unrecognized query %q", str(v, "name"), q)
			} else if _, errs := checkPromQL(e, inner[1]); len(errs) > 0 {
				t.Errorf("variable %s: %v", str(v, "name"), errs)
			}
		}
	}
	if !vars["datasource"] {
		t.Error("no datasource variable")
	}
	ids := map[string]bool{}
	metrics := map[string]bool{}
	panels := list(d, "panels")
	if len(panels) < 8 {
		t.Errorf("%d panels", len(panels))
	}
	for _, p := range panels {
		id := str(p, "id")
		if ids[id] {
			t.Errorf("duplicate panel id %s", id)
		}
		ids[id] = true
		if str(p, "type") == "row" {
			// A row groups the panels below it; it queries nothing.
			if str(p, "title") == "" {
				t.Errorf("row panel %s has no title", id)
			}
			continue
		}
		targets := list(p, "targets")
		if len(targets) == 0 {
			t.Errorf("panel %q has no targets", str(p, "title"))
		}
		for _, tg := range targets {
			expr := str(tg, "expr")
			for _, v := range regexp.MustCompile(`\$\{?(\w+)`).FindAllStringSubmatch(expr, -1) {
				if !vars[v[1]] && !strings.HasPrefix(v[1], "__") {
					t.Errorf("panel %q uses undefined variable $%s", str(p, "title"), v[1])
				}
			}
			refs, errs := checkPromQL(e, expr)
			for _, err := range errs {
				t.Errorf("panel %q: %v", str(p, "title"), err)
			}
			for _, m := range refs.Metrics {
				metrics[m] = true
			}
		}
	}
	for _, m := range []string{"db_client_operation_duration_seconds_bucket", "db_n_plus_one_detected_total", "pgtrace_slow_queries_total", "db_client_connection_count",
		// The pool row.
		"db_client_connection_wait_time_seconds_bucket", "db_client_connection_pending_requests", "db_client_connection_timeouts_total"} {
		if !metrics[m] {
			t.Errorf("no panel over %s", m)
		}
	}
}

// ---------------------------------------------------------------------------
// Configuration names.

// TestPGTRACEVariables checks every PGTRACE_* variable the deployment
// files set against the flags of cmd/pgtrace (each flag --x-y has the
// variable PGTRACE_X_Y).
func TestPGTRACEVariables(t *testing.T) {
	cf := scanCode(t)
	if len(cf.Flags) == 0 {
		t.Fatal("no flags found in cmd/pgtrace")
	}
	known := map[string]bool{}
	for f := range cf.Flags {
		known["PGTRACE_"+strings.ToUpper(strings.ReplaceAll(f, "-", "_"))] = true
	}
	files := append(deployFiles(t)[".yaml"], filepath.Join(repoRoot, "docker-compose.yml"), filepath.Join(repoRoot, "Dockerfile"))
	re := regexp.MustCompile(`\bPGTRACE_[A-Z0-9_]+`)
	seen := 0
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range re.FindAllString(string(b), -1) {
			seen++
			if !known[v] {
				t.Errorf("%s sets %s, which is not a flag's variable of pgtrace serve", p, v)
			}
		}
	}
	if seen == 0 {
		t.Error("no PGTRACE_ variables found in the deployment files")
	}
}

// TestReferenceCheckCanFail feeds the reference checks names the code does
// not emit, so that a passing run means something.
func TestReferenceCheckCanFail(t *testing.T) {
	e := emittedNames(t)
	for _, expr := range []string{
		`rate(db_client_operation_duration_bucket[5m])`,          // no unit suffix
		`rate(db_client_operation_duration_seconds[5m])`,         // bare histogram family
		`rate(db_n_plus_one_detected[5m])`,                       // no _total
		`sum by (tenant) (rate(pgtrace_slow_queries_total[5m]))`, // tenant is tenant_id
	} {
		if _, errs := checkPromQL(e, expr); len(errs) == 0 {
			t.Errorf("checkPromQL(%q) found nothing wrong", expr)
		}
	}
	for _, m := range []string{"db.client.operation.durations", "pgtrace.slow_query", "dotmac.sla.violation"} {
		if signozMetric(e, m) == nil {
			t.Errorf("SigNoz metric %s accepted", m)
		}
	}
	if signozAttribute(e, "tenant") == nil {
		t.Error("SigNoz attribute tenant accepted (the key is tenant.id)")
	}
}

// TestDocsListMetrics keeps the metric table of docs/deploy.md in step with
// the code: every instrument, by its OTel and its Prometheus name.
func TestDocsListMetrics(t *testing.T) {
	e := emittedNames(t)
	b, err := os.ReadFile(filepath.Join(repoRoot, "docs", "deploy.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	for name, in := range e.Instruments {
		family, err := prometheusName(in)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(doc, "`"+name+"`") {
			t.Errorf("docs/deploy.md does not list %s", name)
		}
		if !strings.Contains(doc, "`"+family) {
			t.Errorf("docs/deploy.md does not give the Prometheus name %s of %s", family, name)
		}
	}
	for _, a := range alertNames {
		if !strings.Contains(doc, a) {
			t.Errorf("docs/deploy.md does not describe the alert %q", a)
		}
	}
}
