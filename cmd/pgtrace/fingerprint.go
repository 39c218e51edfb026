package main

import (
	"bufio"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/dotmac/pgtrace/fingerprint"
)

// maxFingerprintLine bounds one stdin line under --lines (and so one
// statement); pgtrace itself does not parse statements longer than 64 KiB.
const maxFingerprintLine = 16 << 20

// fingerprintOutput is the JSON object printed per statement. The keys are
// part of pgtrace's contract (issue 3): exactly these, always present.
type fingerprintOutput struct {
	Fingerprint  string            `json:"fingerprint"`
	Normalized   string            `json:"normalized"`
	Summary      string            `json:"summary"`
	Operation    string            `json:"operation"`
	Collection   string            `json:"collection"`
	Tags         map[string]string `json:"tags"` // {} when none
	TraceID      string            `json:"trace_id"`
	ParentSpanID string            `json:"parent_span_id"`
	Sampled      bool              `json:"sampled"`
	ParseError   string            `json:"parse_error"` // "" when pg_query parsed it
}

// fingerprintCommand is `pgtrace fingerprint`: what pgtrace makes of SQL,
// as one JSON object per statement.
func fingerprintCommand() *cli.Command {
	var (
		lines, pretty, keepUnknown bool
		tenantTag                  string
	)
	return &cli.Command{
		Name:      "fingerprint",
		Usage:     "show what pgtrace makes of SQL: fingerprint, normalized text, summary, comment tags and trace context",
		ArgsUsage: "[SQL ...]",
		Description: "Reads SQL from the arguments (joined by spaces) or, without arguments, from stdin, and prints one JSON\n" +
			"object per statement with the keys fingerprint, normalized, summary, operation, collection, tags,\n" +
			"trace_id, parent_span_id, sampled and parse_error. A text holding several statements gives several\n" +
			"objects, all with the tags and trace context of the text's comment.\n\n" +
			"Examples:\n" +
			"  pgtrace fingerprint \"SELECT * FROM partners WHERE id = 42 /*route='%2Fpartners'*/\"\n" +
			"  pgtrace fingerprint --lines < queries.sql | jq -r .summary | sort | uniq -c",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "lines", Destination: &lines,
				Usage: "treat each line of stdin as one statement text (blank lines are skipped)"},
			&cli.BoolFlag{Name: "pretty", Destination: &pretty,
				Usage: "indent the JSON objects (the default is one object per line)"},
			&cli.StringFlag{Name: "tenant-tag", Value: fingerprint.DefaultTenantKey, Destination: &tenantTag,
				EnvVars: []string{"PGTRACE_TENANT_TAG"},
				Usage:   "sqlcommenter tag read as the tenant, as serve reads it; empty reads none"},
			&cli.BoolFlag{Name: "keep-unknown-tags", Destination: &keepUnknown,
				EnvVars: []string{"PGTRACE_KEEP_UNKNOWN_TAGS"},
				Usage:   "also show sqlcommenter tags pgtrace does not turn into attributes"},
		},
		Action: func(c *cli.Context) error {
			texts, err := fingerprintInput(c, lines)
			if err != nil {
				return err
			}
			a := fingerprint.New(fingerprint.Config{TenantKey: tenantTag, NoTenant: tenantTag == "", KeepUnknownTags: keepUnknown})
			enc := json.NewEncoder(c.App.Writer)
			enc.SetEscapeHTML(false) // keep <, > and & readable in routes and SQL
			if pretty {
				enc.SetIndent("", "  ")
			}
			printed := 0
			for _, text := range texts {
				n, err := printFingerprints(enc, c.App.ErrWriter, a, text)
				if err != nil {
					return fmt.Errorf("write output: %w", err)
				}
				printed += n
			}
			if printed == 0 {
				return usageError(errors.New("fingerprint: no SQL statement in the input (only comments or whitespace)"))
			}
			return nil
		},
	}
}

// fingerprintInput returns the statement texts to analyze: the arguments
// joined by spaces, the whole of stdin, or with --lines each non-blank
// stdin line.
func fingerprintInput(c *cli.Context, lines bool) ([]string, error) {
	if c.NArg() > 0 {
		if lines {
			return nil, usageError(errors.New("fingerprint: --lines reads statements from stdin; pass no SQL arguments with it"))
		}
		return []string{strings.Join(c.Args().Slice(), " ")}, nil
	}
	in := c.App.Reader
	if in == nil {
		in = os.Stdin
	}
	if f, ok := in.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			return nil, usageError(errors.New("fingerprint: no SQL given: pass it as arguments or on stdin (see --help)"))
		}
	}
	var texts []string
	if lines {
		sc := bufio.NewScanner(in)
		sc.Buffer(make([]byte, 0, 64<<10), maxFingerprintLine)
		for sc.Scan() {
			if ln := sc.Text(); strings.TrimSpace(ln) != "" {
				texts = append(texts, ln)
			}
		}
		if err := sc.Err(); err != nil {
			return nil, fmt.Errorf("fingerprint: read stdin: %w", err)
		}
	} else {
		data, err := io.ReadAll(in)
		if err != nil {
			return nil, fmt.Errorf("fingerprint: read stdin: %w", err)
		}
		if strings.TrimSpace(string(data)) != "" {
			texts = []string{string(data)}
		}
	}
	if len(texts) == 0 {
		return nil, usageError(errors.New("fingerprint: no SQL given: pass it as arguments or on stdin (see --help)"))
	}
	return texts, nil
}

// printFingerprints writes one object per statement of text and returns how
// many it wrote. An invalid traceparent is reported on errw: the proxy
// ignores it silently (and counts it), a person wants to know why.
func printFingerprints(enc *json.Encoder, errw io.Writer, a *fingerprint.Analyzer, text string) (int, error) {
	res := a.Analyze(text)
	if res.TraceInvalid {
		tags, _, _ := fingerprint.ParseComment(text)
		_, err := fingerprint.ParseTraceparent(tags["traceparent"])
		fmt.Fprintf(errw, "pgtrace fingerprint: warning: traceparent %q ignored: %v\n", tags["traceparent"], err)
	}
	tags := tagsObject(res.Tags, a.Config().TenantKey)
	var traceID, spanID string
	if res.Trace.IsValid() {
		traceID = hex.EncodeToString(res.Trace.TraceID[:])
		spanID = hex.EncodeToString(res.Trace.SpanID[:])
	}
	for _, q := range res.Queries {
		out := fingerprintOutput{
			Fingerprint:  q.Fingerprint,
			Normalized:   q.Normalized,
			Summary:      q.Summary,
			Operation:    q.Operation,
			Collection:   q.Collection,
			Tags:         tags,
			TraceID:      traceID,
			ParentSpanID: spanID,
			Sampled:      res.Trace.Sampled(),
			ParseError:   q.ParseError,
		}
		if err := enc.Encode(out); err != nil {
			return 0, err
		}
	}
	return len(res.Queries), nil
}

// tagsObject turns Tags back into sqlcommenter keys; never nil, so the JSON
// shows {} rather than null.
func tagsObject(t fingerprint.Tags, tenantTag string) map[string]string {
	m := make(map[string]string, 7+len(t.Extra))
	for k, v := range t.Extra {
		m[k] = v
	}
	for _, kv := range [...]struct{ k, v string }{
		{"application", t.Application}, {"route", t.Route}, {"controller", t.Controller},
		{"action", t.Action}, {"framework", t.Framework}, {"db_driver", t.DBDriver}, {tenantTag, t.Tenant},
	} {
		if kv.v != "" {
			m[kv.k] = kv.v
		}
	}
	return m
}
