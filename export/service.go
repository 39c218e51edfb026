package export

import (
	"context"

	"github.com/dotmac/pgtrace/fingerprint"
	"github.com/dotmac/pgtrace/wire"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// Per-application services. A statement is the application's work, so its
// span (and its transaction's) is exported under a resource named for the
// client application: service.name is the application, and the database
// stays in db.system.name, db.namespace and peer.service. Backends that
// list a service's database calls (SigNoz's per-service "DB calls") then
// show them for the application, and two applications behind one proxy
// stay apart. The proxy's own telemetry (connect spans, metrics) stays
// under pgtrace's resource.

// Where the application's name comes from (Config.ServiceNameFrom).
const (
	// ServiceFromApplicationName: the session's application_name, else the
	// sqlcommenter application tag, else its db_driver tag.
	ServiceFromApplicationName = "application_name"
	// ServiceFromSQLCommenter: the sqlcommenter application tag, else its
	// db_driver tag, else the session's application_name.
	ServiceFromSQLCommenter = "sqlcommenter"
	// ServiceFromNone: every span under pgtrace's own resource.
	ServiceFromNone = "none"
)

// otherApplication is the service and metric label of the applications
// beyond Config.MaxApplications.
const otherApplication = "other"

// applications names the client applications of statements, bounded, and
// keeps a resource and a transaction tracer for each. Under Exporter.mu.
type applications struct {
	from    string
	max     int
	base    *resource.Resource // pgtrace's resource: the attributes the applications' share
	version string             // pgtrace's
	// newTracer makes the tracer of transaction spans under res; nil when
	// no span goes anywhere.
	newTracer func(res *resource.Resource) (trace.Tracer, func(context.Context) error)

	byName map[string]*application
}

// application is one client application's service.
type application struct {
	name     string // bounded: otherApplication beyond the limit
	res      *resource.Resource
	tracer   trace.Tracer // transaction spans
	shutdown func(context.Context) error
	attr     attribute.KeyValue // pgtrace.application = name, for metrics
}

// of returns the application a statement of conn with tags belongs to, by
// Config.ServiceNameFrom (with ServiceFromNone, by application_name: the
// metrics name it all the same), or nil when none is known.
func (a *applications) of(conn *wire.ConnInfo, tags *fingerprint.Tags) *application {
	return a.get(a.name(conn, tags))
}

// spanResource is the resource of app's spans: its own, unless spans stay
// under pgtrace's (ServiceFromNone); nil for pgtrace's.
func (a *applications) spanResource(app *application) *resource.Resource {
	if app == nil || a.from == ServiceFromNone {
		return nil
	}
	return app.res
}

// txTracer is the tracer of app's transaction spans: its own provider's,
// made on first use, or def (pgtrace's) when spans stay under pgtrace's
// resource.
func (a *applications) txTracer(app *application, def trace.Tracer) trace.Tracer {
	if app == nil || a.from == ServiceFromNone || a.newTracer == nil {
		return def
	}
	if app.tracer == nil {
		app.tracer, app.shutdown = a.newTracer(app.res)
	}
	return app.tracer
}

// name is the application a statement of conn with tags belongs to; "" when
// none is known.
func (a *applications) name(conn *wire.ConnInfo, tags *fingerprint.Tags) string {
	var tagged string
	if tags != nil {
		tagged = tags.Application
		if tagged == "" {
			tagged = tags.DBDriver
		}
	}
	switch a.from {
	case ServiceFromSQLCommenter:
		if tagged != "" {
			return tagged
		}
		return conn.Application
	}
	if conn.Application != "" {
		return conn.Application
	}
	return tagged
}

// get returns the service of the application called name, making it when
// new; nil for "" (pgtrace's own). Past the limit, new names share the
// otherApplication service.
func (a *applications) get(name string) *application {
	if name == "" || a == nil {
		return nil
	}
	if app, ok := a.byName[name]; ok {
		return app
	}
	if len(a.byName) >= a.max {
		if other, ok := a.byName[otherApplication]; ok {
			return other
		}
		name = otherApplication
	}
	app := &application{name: name, attr: keyApplication.String(name)}
	// The application's own name, with what the environment says of the
	// deployment (OTEL_RESOURCE_ATTRIBUTES); pgtrace's version is not the
	// application's, and telemetry.distro names who made the spans.
	attrs := []attribute.KeyValue{
		attribute.String("service.name", name),
		attribute.String("telemetry.distro.name", "pgtrace"),
	}
	if a.version != "" {
		attrs = append(attrs, attribute.String("telemetry.distro.version", a.version))
	}
	for it := a.base.Iter(); it.Next(); {
		switch kv := it.Attribute(); kv.Key {
		case "service.name", "service.version", "service.instance.id", "telemetry.distro.name", "telemetry.distro.version":
		default:
			attrs = append(attrs, kv)
		}
	}
	app.res = resource.NewWithAttributes(a.base.SchemaURL(), attrs...)
	a.byName[app.name] = app
	return app
}

// shutdown stops the applications' tracer providers (not the span
// processors they share, which pgtrace's own provider shuts down).
func (a *applications) shutdown(ctx context.Context) {
	for _, app := range a.byName {
		if app.shutdown != nil {
			_ = app.shutdown(ctx)
		}
	}
}

// sharedProcessor is a span processor of pgtrace's tracer provider lent to
// an application's: the application's provider feeds it spans but leaves
// flushing and shutting it down to pgtrace's.
type sharedProcessor struct{ sdktrace.SpanProcessor }

func (sharedProcessor) Shutdown(context.Context) error   { return nil }
func (sharedProcessor) ForceFlush(context.Context) error { return nil }
