package deploy_test

import (
	"context"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	otelprom "go.opentelemetry.io/otel/exporters/prometheus"
	"go.opentelemetry.io/otel/metric"
	sdkmetric "go.opentelemetry.io/otel/sdk/metric"
)

// modulePath is the import path of the repository root (see go.mod).
const modulePath = "github.com/dotmac/pgtrace"

// repoRoot is the repository root, relative to this package's directory
// (go test runs in the package directory).
const repoRoot = ".."

// instrumentKind is the kind of an OpenTelemetry instrument, as far as the
// Prometheus and SigNoz names depend on it.
type instrumentKind int

const (
	kindCounter instrumentKind = iota
	kindUpDownCounter
	kindHistogram
	kindGauge
)

func (k instrumentKind) String() string {
	return [...]string{"counter", "updowncounter", "histogram", "gauge"}[k]
}

// constructorKinds maps the metric.Meter methods that create instruments to
// the kind of instrument they create.
var constructorKinds = map[string]instrumentKind{
	"Int64Counter":                   kindCounter,
	"Float64Counter":                 kindCounter,
	"Int64ObservableCounter":         kindCounter,
	"Float64ObservableCounter":       kindCounter,
	"Int64UpDownCounter":             kindUpDownCounter,
	"Float64UpDownCounter":           kindUpDownCounter,
	"Int64ObservableUpDownCounter":   kindUpDownCounter,
	"Float64ObservableUpDownCounter": kindUpDownCounter,
	"Int64Histogram":                 kindHistogram,
	"Float64Histogram":               kindHistogram,
	"Int64Gauge":                     kindGauge,
	"Float64Gauge":                   kindGauge,
	"Int64ObservableGauge":           kindGauge,
	"Float64ObservableGauge":         kindGauge,
}

// instrument is one metric instrument the code creates.
type instrument struct {
	Name string // OpenTelemetry name, e.g. "db.client.operation.duration"
	Unit string // UCUM unit, "" when none or not resolvable from the source
	Kind instrumentKind
	Pos  string // where it is created, for messages
}

// otelhttpInstruments are the instruments otelhttp's handler records
// (documented in its README and semconv: HTTP server metrics), which the
// companion package's middleware adds to a service. They are not created
// by a constructor call in this repository, so they are listed here.
var otelhttpInstruments = []instrument{
	{Name: "http.server.request.duration", Unit: "s", Kind: kindHistogram, Pos: "otelhttp"},
	{Name: "http.server.request.body.size", Unit: "By", Kind: kindHistogram, Pos: "otelhttp"},
	{Name: "http.server.response.body.size", Unit: "By", Kind: kindHistogram, Pos: "otelhttp"},
	{Name: "http.client.request.duration", Unit: "s", Kind: kindHistogram, Pos: "otelhttp"},
	{Name: "http.client.request.body.size", Unit: "By", Kind: kindHistogram, Pos: "otelhttp"},
}

// documentedAttributes are attribute keys that reach metrics and spans
// without an attribute.Key literal in this repository: otelhttp's HTTP
// server attributes, resource attributes set from OTEL_* variables, and the
// span fields SigNoz's trace queries address directly.
var documentedAttributes = []string{
	// otelhttp / HTTP semantic conventions.
	"http.request.method", "http.response.status_code", "http.route",
	"url.scheme", "network.protocol.name", "network.protocol.version",
	"server.address", "server.port", "error.type",
	// Resource attributes (OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES).
	"service.name", "service.namespace", "service.version", "deployment.environment.name",
	// SigNoz span fields.
	"name", "duration_nano", "trace_id", "span_id", "timestamp", "has_error",
}

// prometheusBuiltinLabels are labels Prometheus series carry besides the
// metric attributes.
var prometheusBuiltinLabels = []string{"le", "job", "instance", "__name__", "otel_scope_name", "otel_scope_version"}

// codeFacts is what the test derives from the repository's Go sources.
type codeFacts struct {
	Instruments []instrument
	Unresolved  []string // constructor calls whose name could not be resolved
	Attributes  map[string]bool
	// PromExporterOptions are the option calls passed to the OTel
	// Prometheus exporter's New, e.g. "WithRegisterer".
	PromExporterOptions []string
	// Flags are the names of urfave/cli flags in cmd/pgtrace; Commands the
	// names of its commands.
	Flags    map[string]bool
	Commands map[string]bool
}

var (
	factsOnce sync.Once
	facts     codeFacts
	factsErr  error
)

// scanCode parses every non-test Go file of the module (outside deploy/ and
// testdata/) once per test binary.
func scanCode(t *testing.T) codeFacts {
	t.Helper()
	factsOnce.Do(func() { facts, factsErr = scan(repoRoot) })
	if factsErr != nil {
		t.Fatalf("scan Go sources: %v", factsErr)
	}
	return facts
}

// goPackage is one parsed directory.
type goPackage struct {
	dir    string
	files  []*ast.File
	consts map[string]string // string constants declared at package level
}

func scan(root string) (codeFacts, error) {
	fset := token.NewFileSet()
	pkgs := map[string]*goPackage{} // by import path
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			name := d.Name()
			if path != root && (strings.HasPrefix(name, ".") || name == "testdata" || name == "vendor" || name == "deploy") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(root, filepath.Dir(path))
		if err != nil {
			return err
		}
		imp := modulePath
		if rel != "." {
			imp += "/" + filepath.ToSlash(rel)
		}
		p := pkgs[imp]
		if p == nil {
			p = &goPackage{dir: filepath.Dir(path), consts: map[string]string{}}
			pkgs[imp] = p
		}
		p.files = append(p.files, f)
		return nil
	})
	if err != nil {
		return codeFacts{}, err
	}

	// Package-level string constants; two passes resolve constants defined
	// in terms of others in the same package.
	for range 2 {
		for _, p := range pkgs {
			for _, f := range p.files {
				for _, decl := range f.Decls {
					gd, ok := decl.(*ast.GenDecl)
					if !ok || gd.Tok != token.CONST {
						continue
					}
					for _, spec := range gd.Specs {
						vs := spec.(*ast.ValueSpec)
						for i, n := range vs.Names {
							if i < len(vs.Values) {
								if s, ok := p.stringValue(vs.Values[i], nil, nil); ok {
									p.consts[n.Name] = s
								}
							}
						}
					}
				}
			}
		}
	}

	cf := codeFacts{Attributes: map[string]bool{}, Flags: map[string]bool{}, Commands: map[string]bool{}}
	for imp, p := range pkgs {
		for _, f := range p.files {
			imports := fileImports(f)
			ast.Inspect(f, func(n ast.Node) bool {
				switch n := n.(type) {
				case *ast.CallExpr:
					cf.inspectCall(fset, p, pkgs, imports, n)
				case *ast.CompositeLit:
					if strings.HasSuffix(imp, "/cmd/pgtrace") {
						cf.inspectCLI(p, n)
					}
					if strings.HasSuffix(imp, "/detector") {
						cf.inspectFindingCounter(fset, p, n)
					}
				}
				return true
			})
		}
	}
	slices.SortFunc(cf.Instruments, func(a, b instrument) int { return strings.Compare(a.Name, b.Name) })
	return cf, nil
}

// fileImports maps the names a file uses for its imports to import paths.
func fileImports(f *ast.File) map[string]string {
	m := map[string]string{}
	for _, is := range f.Imports {
		path, _ := strconv.Unquote(is.Path.Value)
		name := path[strings.LastIndex(path, "/")+1:]
		if is.Name != nil {
			name = is.Name.Name
		} else if strings.HasPrefix(name, "v") && strings.Count(path, "/") > 0 {
			// Versioned paths: ".../semconv/v1.43.0" is package semconv,
			// ".../pg_query_go/v5" is pg_query.
			if _, err := strconv.Atoi(strings.TrimPrefix(strings.SplitN(name, ".", 2)[0], "v")); err == nil {
				parent := path[:strings.LastIndex(path, "/")]
				name = parent[strings.LastIndex(parent, "/")+1:]
			}
		}
		m[name] = path
	}
	return m
}

// stringValue resolves e to a string when it is a string literal, a
// concatenation of resolvable parts, a constant of p, or (with imports) a
// constant of another package of the module.
func (p *goPackage) stringValue(e ast.Expr, pkgs map[string]*goPackage, imports map[string]string) (string, bool) {
	switch e := e.(type) {
	case *ast.BasicLit:
		if e.Kind != token.STRING {
			return "", false
		}
		s, err := strconv.Unquote(e.Value)
		return s, err == nil
	case *ast.Ident:
		s, ok := p.consts[e.Name]
		return s, ok
	case *ast.ParenExpr:
		return p.stringValue(e.X, pkgs, imports)
	case *ast.BinaryExpr:
		if e.Op != token.ADD {
			return "", false
		}
		a, ok1 := p.stringValue(e.X, pkgs, imports)
		b, ok2 := p.stringValue(e.Y, pkgs, imports)
		return a + b, ok1 && ok2
	case *ast.SelectorExpr:
		x, ok := e.X.(*ast.Ident)
		if !ok || pkgs == nil {
			return "", false
		}
		other := pkgs[imports[x.Name]]
		if other == nil {
			return "", false
		}
		s, ok := other.consts[e.Sel.Name]
		return s, ok
	case *ast.CallExpr:
		// attribute.Key("x") used as a constant value.
		if sel, ok := e.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == "Key" && len(e.Args) == 1 {
			return p.stringValue(e.Args[0], pkgs, imports)
		}
	}
	return "", false
}

// attributeConstructors are the go.opentelemetry.io/otel/attribute
// functions whose first argument is an attribute key.
var attributeConstructors = map[string]bool{
	"Key": true, "String": true, "Int": true, "Int64": true, "Bool": true, "Float64": true,
	"StringSlice": true, "IntSlice": true, "Int64Slice": true, "BoolSlice": true, "Float64Slice": true, "Stringer": true,
}

func (cf *codeFacts) inspectCall(fset *token.FileSet, p *goPackage, pkgs map[string]*goPackage, imports map[string]string, call *ast.CallExpr) {
	sel, ok := call.Fun.(*ast.SelectorExpr)
	if !ok {
		return
	}
	pkgIdent, _ := sel.X.(*ast.Ident)
	switch {
	case pkgIdent != nil && imports[pkgIdent.Name] == "go.opentelemetry.io/otel/attribute" && attributeConstructors[sel.Sel.Name]:
		if len(call.Args) > 0 {
			if k, ok := p.stringValue(call.Args[0], pkgs, imports); ok {
				cf.Attributes[k] = true
			}
		}
	case pkgIdent != nil && imports[pkgIdent.Name] == "go.opentelemetry.io/otel/exporters/prometheus" && sel.Sel.Name == "New":
		for _, a := range call.Args {
			name := "?"
			if c, ok := a.(*ast.CallExpr); ok {
				if s, ok := c.Fun.(*ast.SelectorExpr); ok {
					name = s.Sel.Name
				}
			}
			cf.PromExporterOptions = append(cf.PromExporterOptions, name)
		}
	default:
		kind, ok := constructorKinds[sel.Sel.Name]
		if !ok || len(call.Args) == 0 {
			return
		}
		if isFindingCounterName(call.Args[0]) {
			return // export makes the finding counters from detector's list: found there
		}
		pos := fset.Position(call.Pos())
		where := filepath.ToSlash(strings.TrimPrefix(pos.Filename, repoRoot+string(filepath.Separator))) + ":" + strconv.Itoa(pos.Line)
		name, ok := p.stringValue(call.Args[0], pkgs, imports)
		if !ok {
			cf.Unresolved = append(cf.Unresolved, where)
			return
		}
		in := instrument{Name: name, Kind: kind, Pos: where}
		for _, a := range call.Args[1:] {
			c, ok := a.(*ast.CallExpr)
			if !ok {
				continue
			}
			if s, ok := c.Fun.(*ast.SelectorExpr); ok && s.Sel.Name == "WithUnit" && len(c.Args) == 1 {
				// An unresolvable unit (e.g. "{"+currency+"}") is an
				// annotation in braces in this code base, which the
				// Prometheus translation drops just as it does "".
				in.Unit, _ = p.stringValue(c.Args[0], pkgs, imports)
			}
		}
		cf.Instruments = append(cf.Instruments, in)
	}
}

// inspectFindingCounter records the counter of a finding type: a
// detector.Counter literal in detector's list of finding types
// (detector.FindingTypes), from which export makes its counters.
func (cf *codeFacts) inspectFindingCounter(fset *token.FileSet, p *goPackage, lit *ast.CompositeLit) {
	if id, ok := lit.Type.(*ast.Ident); !ok || id.Name != "Counter" {
		return
	}
	var name, unit string
	var ok bool
	for i, e := range lit.Elts {
		field := []string{"Name", "Unit", "Description"}[min(i, 2)]
		if kv, isKV := e.(*ast.KeyValueExpr); isKV {
			field, e = kv.Key.(*ast.Ident).Name, kv.Value
		}
		switch field {
		case "Name":
			name, ok = p.stringValue(e, nil, nil)
		case "Unit":
			unit, _ = p.stringValue(e, nil, nil)
		}
	}
	pos := fset.Position(lit.Pos())
	where := filepath.ToSlash(strings.TrimPrefix(pos.Filename, repoRoot+string(filepath.Separator))) + ":" + strconv.Itoa(pos.Line)
	if !ok {
		cf.Unresolved = append(cf.Unresolved, where)
		return
	}
	cf.Instruments = append(cf.Instruments, instrument{Name: name, Kind: kindCounter, Unit: unit, Pos: where})
}

// isFindingCounterName reports whether e is x.Counter.Name: the name of a
// finding type's counter, made from detector's list.
func isFindingCounterName(e ast.Expr) bool {
	sel, ok := e.(*ast.SelectorExpr)
	if !ok || sel.Sel.Name != "Name" {
		return false
	}
	inner, ok := sel.X.(*ast.SelectorExpr)
	return ok && inner.Sel.Name == "Counter"
}

// inspectCLI records flag and command names of urfave/cli composite
// literals (cli.StringFlag{Name: ...}, cli.Command{Name: ...}).
func (cf *codeFacts) inspectCLI(p *goPackage, lit *ast.CompositeLit) {
	sel, ok := lit.Type.(*ast.SelectorExpr)
	if !ok {
		return
	}
	typ := sel.Sel.Name
	isFlag := strings.HasSuffix(typ, "Flag")
	if !isFlag && typ != "Command" {
		return
	}
	for _, e := range lit.Elts {
		kv, ok := e.(*ast.KeyValueExpr)
		if !ok {
			continue
		}
		if k, ok := kv.Key.(*ast.Ident); !ok || k.Name != "Name" {
			continue
		}
		if name, ok := p.stringValue(kv.Value, nil, nil); ok {
			if isFlag {
				cf.Flags[name] = true
			} else {
				cf.Commands[name] = true
			}
		}
	}
}

// emitted is the set of names a deployment file may reference, in each
// naming scheme.
type emitted struct {
	Instruments map[string]instrument // by OTel name
	Prometheus  map[string]string     // Prometheus series name → OTel name
	SigNoz      map[string]string     // SigNoz metric name → OTel name
	Attributes  map[string]bool       // OTel attribute keys
	PromLabels  map[string]bool       // Prometheus label names
}

var (
	emittedOnce sync.Once
	emittedSet  emitted
	emittedErr  error
)

// emittedNames derives the emitted names from the code, once per test
// binary.
func emittedNames(t *testing.T) emitted {
	t.Helper()
	cf := scanCode(t)
	emittedOnce.Do(func() { emittedSet, emittedErr = buildEmitted(cf) })
	if emittedErr != nil {
		t.Fatal(emittedErr)
	}
	return emittedSet
}

func buildEmitted(cf codeFacts) (emitted, error) {
	e := emitted{
		Instruments: map[string]instrument{},
		Prometheus:  map[string]string{},
		SigNoz:      map[string]string{},
		Attributes:  map[string]bool{},
		PromLabels:  map[string]bool{},
	}
	for _, in := range append(slices.Clone(cf.Instruments), otelhttpInstruments...) {
		e.Instruments[in.Name] = in
	}
	for name, in := range e.Instruments {
		family, err := prometheusName(in)
		if err != nil {
			return e, err
		}
		under := strings.ReplaceAll(name, ".", "_")
		e.SigNoz[name] = name
		e.SigNoz[under] = name
		if in.Kind == kindHistogram {
			for _, s := range []string{"bucket", "sum", "count"} {
				e.Prometheus[family+"_"+s] = name
				e.SigNoz[name+"."+s] = name
				e.SigNoz[under+"_"+s] = name
				e.SigNoz[family+"_"+s] = name
			}
		} else {
			e.Prometheus[family] = name
			e.SigNoz[family] = name
		}
	}
	for k := range cf.Attributes {
		e.Attributes[k] = true
	}
	for _, k := range documentedAttributes {
		e.Attributes[k] = true
	}
	for k := range e.Attributes {
		e.PromLabels[promLabel(k)] = true
	}
	for _, l := range prometheusBuiltinLabels {
		e.PromLabels[l] = true
	}
	return e, nil
}

// promLabel is the Prometheus label name of an attribute key.
func promLabel(key string) string {
	return strings.Map(func(r rune) rune {
		if r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' {
			return r
		}
		return '_'
	}, key)
}

// prometheusName runs the OpenTelemetry Prometheus exporter, configured as
// export/ configures it (default translation), on one instrument and
// returns the metric family name it exposes.
func prometheusName(in instrument) (string, error) {
	reg := prometheus.NewRegistry()
	exp, err := otelprom.New(otelprom.WithRegisterer(reg))
	if err != nil {
		return "", err
	}
	mp := sdkmetric.NewMeterProvider(sdkmetric.WithReader(exp))
	defer mp.Shutdown(context.Background())
	m := mp.Meter("deploy-test")
	ctx := context.Background()
	unit := metric.WithUnit(in.Unit)
	switch in.Kind {
	case kindCounter:
		c, err := m.Float64Counter(in.Name, unit)
		if err != nil {
			return "", err
		}
		c.Add(ctx, 1)
	case kindUpDownCounter:
		c, err := m.Float64UpDownCounter(in.Name, unit)
		if err != nil {
			return "", err
		}
		c.Add(ctx, 1)
	case kindHistogram:
		h, err := m.Float64Histogram(in.Name, unit)
		if err != nil {
			return "", err
		}
		h.Record(ctx, 1)
	case kindGauge:
		g, err := m.Float64Gauge(in.Name, unit)
		if err != nil {
			return "", err
		}
		g.Record(ctx, 1)
	}
	mfs, err := reg.Gather()
	if err != nil {
		return "", err
	}
	for _, mf := range mfs {
		if mf.GetName() != "target_info" {
			return mf.GetName(), nil
		}
	}
	return "", os.ErrNotExist
}

// TestDerivedNames checks that the derivation from the code finds the
// instruments the deployment files are built on, so that the reference
// checks elsewhere cannot pass vacuously.
func TestDerivedNames(t *testing.T) {
	cf := scanCode(t)
	for _, u := range cf.Unresolved {
		t.Logf("instrument constructor with a name not resolvable from the source: %s", u)
	}
	if len(cf.Instruments) == 0 {
		t.Fatal("no instrument constructors found in the Go sources")
	}
	e := emittedNames(t)
	for _, in := range cf.Instruments {
		t.Logf("%-40s %-14s unit=%-14q %s", in.Name, in.Kind, in.Unit, in.Pos)
	}
	want := map[string]string{ // OTel name → one Prometheus series it must map to
		"db.client.operation.duration": "db_client_operation_duration_seconds_bucket",
		"db.n_plus_one.detected":       "db_n_plus_one_detected_total",
		"http.server.request.duration": "http_server_request_duration_seconds_count",
	}
	for otel, prom := range want {
		if _, ok := e.Instruments[otel]; !ok {
			t.Errorf("derived instruments lack %s", otel)
			continue
		}
		if e.Prometheus[prom] != otel {
			t.Errorf("Prometheus name %s does not map to %s (got %q)", prom, otel, e.Prometheus[prom])
		}
	}
	// A classic histogram has no series under its bare family name.
	if _, ok := e.Prometheus["db_client_operation_duration_seconds"]; ok {
		t.Error("bare histogram family name accepted as a series")
	}
	for _, k := range []string{"db.query.summary", "tenant.id", "partner.id"} {
		if !e.Attributes[k] {
			t.Errorf("derived attributes lack %s", k)
		}
	}
}

// TestPrometheusExporterOptions guards the assumption prometheusName makes:
// export/ uses the exporter's default name translation. An option that
// changes names (WithoutUnits, WithoutCounterSuffixes, WithNamespace,
// WithTranslationStrategy, ...) must be mirrored in prometheusName.
func TestPrometheusExporterOptions(t *testing.T) {
	cf := scanCode(t)
	if len(cf.PromExporterOptions) == 0 {
		t.Fatal("no call to the OpenTelemetry Prometheus exporter's New found in the Go sources")
	}
	neutral := map[string]bool{"WithRegisterer": true, "WithProducer": true, "WithoutScopeInfo": true, "WithoutTargetInfo": true, "WithResourceAsConstantLabels": true}
	for _, o := range cf.PromExporterOptions {
		if !neutral[o] {
			t.Errorf("the Prometheus exporter is configured with %s, which may change metric names; mirror it in prometheusName", o)
		}
	}
}
