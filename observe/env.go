package observe

import (
	"strings"

	"github.com/dotmac/pgtrace/internal/otelenv"
)

// Environment variables this package reads itself. Every read of the
// environment is in this file or, for the OTEL_* variables pgtrace reads
// too (endpoints, protocols, exporters, the sampler, OTEL_BSP_*, the
// metric interval), in internal/otelenv, so that both read them alike;
// the OTLP exporters read the rest (headers, certificates, timeouts).
const (
	// EnvEnvironment sets deployment.environment.name.
	EnvEnvironment = "ENVIRONMENT"
	// EnvSamplingRatio is the guide's sampling ratio variable: the ratio of
	// root spans sampled, children following their parent. OTEL_TRACES_SAMPLER
	// takes precedence when both are set.
	EnvSamplingRatio = "OTEL_TRACES_SAMPLING_RATIO"
	// EnvServiceVersion is the guide's service version variable: it sets
	// service.version unless WithServiceVersion or a service.version in
	// OTEL_RESOURCE_ATTRIBUTES does.
	EnvServiceVersion = "SERVICE_VERSION"
)

// env reads the variables of this package through getenv (os.Getenv, or a
// map in tests). The OTEL_* ones are read by internal/otelenv, as pgtrace
// reads them.
type env func(string) string

func (e env) get(key string) string { return strings.TrimSpace(e(key)) }

// serviceName is OTEL_SERVICE_NAME, else the service.name of
// OTEL_RESOURCE_ATTRIBUTES, else "".
func (e env) serviceName() string { return otelenv.ServiceName(otelenv.Getenv(e)) }

func (e env) environment() string { return e.get(EnvEnvironment) }
