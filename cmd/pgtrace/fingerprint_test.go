package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"io"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/urfave/cli/v2"
)

// runFingerprint runs `pgtrace fingerprint args…` in a throwaway app with
// stdin, and returns stdout, stderr and the error.
func runFingerprint(t *testing.T, stdin string, args ...string) (string, string, error) {
	t.Helper()
	var stdout, stderr bytes.Buffer
	app := &cli.App{
		Name:           "pgtrace",
		Commands:       []*cli.Command{fingerprintCommand()},
		Reader:         strings.NewReader(stdin),
		Writer:         &stdout,
		ErrWriter:      &stderr,
		ExitErrHandler: func(*cli.Context, error) {},
	}
	err := app.RunContext(context.Background(), append([]string{"pgtrace", "fingerprint"}, args...))
	return stdout.String(), stderr.String(), err
}

// decodeAll decodes a stream of JSON objects into maps.
func decodeAll(t *testing.T, out string) []map[string]any {
	t.Helper()
	var objs []map[string]any
	dec := json.NewDecoder(strings.NewReader(out))
	for {
		var m map[string]any
		if err := dec.Decode(&m); err == io.EOF {
			break
		} else if err != nil {
			t.Fatalf("output is not a stream of JSON objects: %v\n%s", err, out)
		}
		objs = append(objs, m)
	}
	return objs
}

var wantKeys = []string{"collection", "fingerprint", "normalized", "operation", "parent_span_id", "parse_error", "sampled", "summary", "tags", "trace_id"}

func TestFingerprintCommand(t *testing.T) {
	const tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	tests := []struct {
		name  string
		stdin string
		args  []string
		want  []map[string]any // fields checked (all keys are always checked to be present)
	}{
		{
			name: "arguments joined by spaces",
			args: []string{"SELECT * FROM partners", "WHERE id = 42", "/*route='%2Fpartners%2F%3Cid%3E',tenant_id='acme',traceparent='" + tp + "'*/"},
			want: []map[string]any{{
				"normalized": "SELECT * FROM partners WHERE id = $1", "summary": "SELECT partners",
				"operation": "SELECT", "collection": "partners",
				"tags":     map[string]any{"route": "/partners/<id>", "tenant_id": "acme"},
				"trace_id": "0af7651916cd43dd8448eb211c80319c", "parent_span_id": "b7ad6b7169203331",
				"sampled": true, "parse_error": "",
			}},
		},
		{
			name:  "stdin with several statements shares the comment",
			stdin: "BEGIN;\nINSERT INTO commissions (amount) VALUES (12.5);\nCOMMIT;\n/*application='billing'*/\n",
			want: []map[string]any{
				{"summary": "BEGIN", "tags": map[string]any{"application": "billing"}, "trace_id": ""},
				{"summary": "INSERT commissions", "normalized": "INSERT INTO commissions (amount) VALUES ($1)", "tags": map[string]any{"application": "billing"}},
				{"summary": "COMMIT", "tags": map[string]any{"application": "billing"}},
			},
		},
		{
			name:  "lines",
			stdin: "SELECT 1\n\n   \nDELETE FROM sessions WHERE id = 'abc' /*application='x'*/\nSELEC 'secret'\n",
			args:  []string{"--lines"},
			want: []map[string]any{
				{"summary": "SELECT", "tags": map[string]any{}, "parse_error": ""},
				{"summary": "DELETE sessions", "collection": "sessions", "tags": map[string]any{"application": "x"}},
				{"normalized": "SELEC $1", "parse_error": "syntax error at or near \"SELEC\""},
			},
		},
		{
			name: "pretty",
			args: []string{"--pretty", "SHOW work_mem"},
			want: []map[string]any{{"summary": "SHOW", "operation": "SHOW", "tags": map[string]any{}}},
		},
		{
			name:  "unknown tags on request and a custom tenant tag",
			stdin: "SELECT 1 /*team='core',tenant='t9',tenant_id='not-the-tenant'*/",
			args:  []string{"--keep-unknown-tags", "--tenant-tag", "tenant"},
			want:  []map[string]any{{"tags": map[string]any{"team": "core", "tenant": "t9", "tenant_id": "not-the-tenant"}}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, errOut, err := runFingerprint(t, tt.stdin, tt.args...)
			if err != nil {
				t.Fatalf("fingerprint: %v (stderr %q)", err, errOut)
			}
			objs := decodeAll(t, out)
			if len(objs) != len(tt.want) {
				t.Fatalf("%d objects, want %d:\n%s", len(objs), len(tt.want), out)
			}
			for i, obj := range objs {
				var keys []string
				for k := range obj {
					keys = append(keys, k)
				}
				sort.Strings(keys)
				if d := cmp.Diff(wantKeys, keys); d != "" {
					t.Errorf("object %d keys (-want +got):\n%s", i, d)
				}
				if fp, _ := obj["fingerprint"].(string); len(fp) != 16 {
					t.Errorf("object %d: fingerprint %q", i, fp)
				}
				got := map[string]any{}
				for k := range tt.want[i] {
					got[k] = obj[k]
				}
				if d := cmp.Diff(tt.want[i], got); d != "" {
					t.Errorf("object %d (-want +got):\n%s", i, d)
				}
			}
			pretty := len(tt.args) > 0 && tt.args[0] == "--pretty"
			if lines := strings.Count(out, "\n"); pretty != (lines > len(objs)) {
				t.Errorf("pretty=%v but %d lines for %d objects:\n%s", pretty, lines, len(objs), out)
			}
		})
	}
}

func TestFingerprintCommandSameQuerySameFingerprint(t *testing.T) {
	out, _, err := runFingerprint(t, "SELECT * FROM t WHERE id = 1\nselect *  from t where id = $1 /*traceparent='00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'*/\nSELECT * FROM u WHERE id = 1\n", "--lines")
	if err != nil {
		t.Fatal(err)
	}
	objs := decodeAll(t, out)
	if len(objs) != 3 || objs[0]["fingerprint"] != objs[1]["fingerprint"] || objs[0]["fingerprint"] == objs[2]["fingerprint"] {
		t.Errorf("fingerprints: %v / %v / %v", objs[0]["fingerprint"], objs[1]["fingerprint"], objs[2]["fingerprint"])
	}
}

func TestFingerprintCommandInvalidTraceparent(t *testing.T) {
	out, errOut, err := runFingerprint(t, "", "SELECT 1 /*traceparent='ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01'*/")
	if err != nil {
		t.Fatal(err)
	}
	objs := decodeAll(t, out)
	if len(objs) != 1 || objs[0]["trace_id"] != "" || objs[0]["sampled"] != false {
		t.Errorf("output %s", out)
	}
	if !strings.Contains(errOut, "traceparent") || !strings.Contains(errOut, "version ff") {
		t.Errorf("stderr %q does not explain the ignored traceparent", errOut)
	}
}

func TestFingerprintCommandErrors(t *testing.T) {
	tests := []struct {
		name, stdin string
		args        []string
		want        string
	}{
		{"no input", "", nil, "no SQL given"},
		{"blank input", " \n\t\n", nil, "no SQL given"},
		{"blank lines", "\n\n", []string{"--lines"}, "no SQL given"},
		{"only a comment", "/* nothing */ ;", nil, "no SQL statement"},
		{"lines with arguments", "", []string{"--lines", "SELECT 1"}, "--lines reads statements from stdin"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, _, err := runFingerprint(t, tt.stdin, tt.args...)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("err = %v, want one containing %q", err, tt.want)
			}
			var ee *exitError
			if !errors.As(err, &ee) || exitCode(err) != 2 {
				t.Errorf("exit code %d, want 2 (usage)", exitCode(err))
			}
			if out != "" {
				t.Errorf("printed %q on error", out)
			}
		})
	}
}
