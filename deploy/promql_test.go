package deploy_test

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"unicode"

	"github.com/google/go-cmp/cmp"
)

// This file holds a small PromQL reader: enough to check that an expression
// is well formed at the token level (balanced brackets, known functions,
// label matchers of the form label op "string", durations in ranges) and to
// list the metric names and label names it references. It is deliberately
// not a full parser (github.com/prometheus/prometheus/promql/parser would
// pull Prometheus into the module); promtool check rules is the full check.

// promFunctions are PromQL's functions and aggregation operators.
var promFunctions = map[string]bool{}

func init() {
	for _, f := range strings.Fields(`
		sum min max avg group stddev stdvar count count_values bottomk topk quantile limitk limit_ratio
		abs absent absent_over_time ceil changes clamp clamp_max clamp_min day_of_month day_of_week
		day_of_year days_in_month delta deriv exp floor histogram_avg histogram_count histogram_fraction
		histogram_quantile histogram_stddev histogram_stdvar histogram_sum holt_winters double_exponential_smoothing
		hour idelta increase irate label_join label_replace ln log2 log10 minute month predict_linear
		rate resets round scalar sgn sort sort_desc sort_by_label sort_by_label_desc sqrt time timestamp vector year
		avg_over_time min_over_time max_over_time sum_over_time count_over_time quantile_over_time
		stddev_over_time stdvar_over_time last_over_time present_over_time mad_over_time
		acos acosh asin asinh atan atanh cos cosh sin sinh tan tanh deg pi rad info`) {
		promFunctions[f] = true
	}
}

// promKeywords are identifiers that are neither metrics nor functions.
var promKeywords = map[string]bool{
	"and": true, "or": true, "unless": true, "bool": true, "offset": true, "atan2": true,
	"inf": true, "nan": true, "Inf": true, "NaN": true,
}

// promGrouping are the modifiers followed by a parenthesized label list.
var promGrouping = map[string]bool{
	"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true,
}

type promTokenKind int

const (
	tokIdent promTokenKind = iota
	tokNumber
	tokString
	tokVar // Grafana variable: $x, ${x}, $__rate_interval
	tokPunct
	tokOp
)

type promToken struct {
	kind promTokenKind
	text string // for strings, the unquoted value
}

func lexPromQL(s string) ([]promToken, error) {
	var toks []promToken
	i := 0
	for i < len(s) {
		c := s[i]
		switch {
		case c == ' ' || c == '\t' || c == '\n' || c == '\r':
			i++
		case c == '#': // comment to end of line
			for i < len(s) && s[i] != '\n' {
				i++
			}
		case c == '"' || c == '\'' || c == '`':
			j := i + 1
			var b strings.Builder
			for j < len(s) && s[j] != c {
				if s[j] == '\\' && c != '`' && j+1 < len(s) {
					j++
				}
				b.WriteByte(s[j])
				j++
			}
			if j >= len(s) {
				return nil, fmt.Errorf("unterminated string at offset %d", i)
			}
			toks = append(toks, promToken{tokString, b.String()})
			i = j + 1
		case c == '$':
			j := i + 1
			if j < len(s) && s[j] == '{' {
				k := strings.IndexByte(s[j:], '}')
				if k < 0 {
					return nil, fmt.Errorf("unterminated ${ at offset %d", i)
				}
				j += k + 1
			} else {
				for j < len(s) && (isIdentByte(s[j]) || s[j] == ':') {
					j++
				}
			}
			toks = append(toks, promToken{tokVar, s[i:j]})
			i = j
		case c >= '0' && c <= '9' || c == '.' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9':
			// Numbers and durations (5m, 1h30m, 0.95, 1e3).
			j := i
			for j < len(s) && (isIdentByte(s[j]) || s[j] == '.') {
				j++
			}
			toks = append(toks, promToken{tokNumber, s[i:j]})
			i = j
		case isIdentByte(c):
			j := i
			for j < len(s) && (isIdentByte(s[j]) || s[j] == ':') {
				j++
			}
			toks = append(toks, promToken{tokIdent, s[i:j]})
			i = j
		case strings.ContainsRune("(){}[],:", rune(c)):
			toks = append(toks, promToken{tokPunct, string(c)})
			i++
		default:
			for _, op := range []string{"==", "!=", "<=", ">=", "=~", "!~", "+", "-", "*", "/", "%", "^", "<", ">", "=", "@"} {
				if strings.HasPrefix(s[i:], op) {
					toks = append(toks, promToken{tokOp, op})
					i += len(op)
					goto next
				}
			}
			return nil, fmt.Errorf("unexpected %q at offset %d", c, i)
		next:
		}
	}
	return toks, nil
}

func isIdentByte(c byte) bool {
	return c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// promMatcher is one label matcher of a vector selector.
type promMatcher struct {
	Metric, Label, Op, Value string
}

// promRefs are the names an expression references.
type promRefs struct {
	Metrics  []string
	Labels   []string // in matchers and grouping clauses
	Matchers []promMatcher
}

// parsePromQL checks expr at the token level and lists its references.
func parsePromQL(expr string) (promRefs, error) {
	toks, err := lexPromQL(expr)
	if err != nil {
		return promRefs{}, err
	}
	if len(toks) == 0 {
		return promRefs{}, fmt.Errorf("empty expression")
	}
	var r promRefs
	var stack []string
	peek := func(i int) promToken {
		if i < len(toks) {
			return toks[i]
		}
		return promToken{kind: -1}
	}
	for i := 0; i < len(toks); i++ {
		t := toks[i]
		switch t.kind {
		case tokIdent:
			next := peek(i + 1)
			switch {
			case promGrouping[t.text]:
				if next.kind != tokPunct || next.text != "(" {
					if t.text == "group_left" || t.text == "group_right" {
						continue
					}
					return r, fmt.Errorf("%s without a label list", t.text)
				}
				j := i + 2
				for ; j < len(toks) && toks[j].text != ")"; j++ {
					switch {
					case toks[j].kind == tokIdent:
						r.Labels = append(r.Labels, toks[j].text)
					case toks[j].kind == tokPunct && toks[j].text == ",":
					default:
						return r, fmt.Errorf("unexpected %q in %s(...)", toks[j].text, t.text)
					}
				}
				if j == len(toks) {
					return r, fmt.Errorf("unclosed %s(", t.text)
				}
				i = j
			case promKeywords[t.text]:
			case next.kind == tokPunct && next.text == "(" || next.kind == tokIdent && promGrouping[next.text]:
				if !promFunctions[t.text] {
					return r, fmt.Errorf("unknown function %s", t.text)
				}
			default:
				r.Metrics = append(r.Metrics, t.text)
				if next.kind == tokPunct && next.text == "{" {
					j, err := parseMatchers(toks, i+2, t.text, &r)
					if err != nil {
						return r, err
					}
					i = j
				}
			}
		case tokPunct:
			switch t.text {
			case "(":
				stack = append(stack, ")")
			case "[":
				// A range or subquery: durations, variables and ':' only.
				j := i + 1
				for ; j < len(toks) && toks[j].text != "]"; j++ {
					if toks[j].kind != tokNumber && toks[j].kind != tokVar && toks[j].text != ":" {
						return r, fmt.Errorf("unexpected %q in range", toks[j].text)
					}
				}
				if j == len(toks) || j == i+1 {
					return r, fmt.Errorf("bad range selector")
				}
				i = j
			case "{":
				// A selector without a metric name: {__name__="x"}.
				j, err := parseMatchers(toks, i+1, "", &r)
				if err != nil {
					return r, err
				}
				i = j
			case ")":
				if len(stack) == 0 || stack[len(stack)-1] != ")" {
					return r, fmt.Errorf("unbalanced )")
				}
				stack = stack[:len(stack)-1]
			case "]", "}":
				return r, fmt.Errorf("unbalanced %s", t.text)
			}
		}
	}
	if len(stack) > 0 {
		return r, fmt.Errorf("unclosed (")
	}
	return r, nil
}

// parseMatchers reads `label op "value", ...}` from toks[i:] and returns the
// index of the closing brace.
func parseMatchers(toks []promToken, i int, metric string, r *promRefs) (int, error) {
	for ; i < len(toks); i++ {
		t := toks[i]
		if t.kind == tokPunct && t.text == "}" {
			return i, nil
		}
		if t.kind == tokPunct && t.text == "," {
			continue
		}
		if t.kind != tokIdent || i+2 >= len(toks) {
			return i, fmt.Errorf("bad label matcher at %q", t.text)
		}
		op, val := toks[i+1], toks[i+2]
		if op.kind != tokOp || !slices.Contains([]string{"=", "!=", "=~", "!~"}, op.text) || val.kind != tokString {
			return i, fmt.Errorf("bad label matcher %s %s %s", t.text, op.text, val.text)
		}
		r.Labels = append(r.Labels, t.text)
		r.Matchers = append(r.Matchers, promMatcher{Metric: metric, Label: t.text, Op: op.text, Value: val.text})
		i += 2
	}
	return i, fmt.Errorf("unclosed {")
}

func TestParsePromQL(t *testing.T) {
	tests := []struct {
		expr    string
		want    promRefs
		wantErr string
	}{
		{
			expr: `rate(foo_total[5m])`,
			want: promRefs{Metrics: []string{"foo_total"}},
		},
		{
			expr: `histogram_quantile(0.95, sum by (le, http_route) (rate(x_bucket{http_route=~"/(a|b)(/.*)?", job!=""}[$__rate_interval]))) > 0.8`,
			want: promRefs{
				Metrics: []string{"x_bucket"},
				Labels:  []string{"le", "http_route", "http_route", "job"},
				Matchers: []promMatcher{
					{Metric: "x_bucket", Label: "http_route", Op: "=~", Value: "/(a|b)(/.*)?"},
					{Metric: "x_bucket", Label: "job", Op: "!=", Value: ""},
				},
			},
		},
		{
			expr: `sum(rate(a_total[5m])) / (sum(rate(a_total[5m])) + sum(rate(b_total[5m]))) > bool 0.5 and on(job) c`,
			want: promRefs{Metrics: []string{"a_total", "a_total", "b_total", "c"}, Labels: []string{"job"}},
		},
		{
			expr: `topk(20, sum without (instance) (increase(d_total{a='x\'y'}[1h:5m] offset 1d)))`,
			want: promRefs{
				Metrics:  []string{"d_total"},
				Labels:   []string{"instance", "a"},
				Matchers: []promMatcher{{Metric: "d_total", Label: "a", Op: "=", Value: "x'y"}},
			},
		},
		{expr: `rate(foo_total[5m]`, wantErr: "unclosed ("},
		{expr: `rate(foo_total[5m]))`, wantErr: "unbalanced )"},
		{expr: `rates(foo_total[5m])`, wantErr: "unknown function rates"},
		{expr: `foo{a=b}`, wantErr: "bad label matcher"},
		{expr: `foo{a="b"`, wantErr: "unclosed {"},
		{expr: `rate(foo[bar])`, wantErr: "unexpected \"bar\" in range"},
		{expr: `sum by foo`, wantErr: "by without a label list"},
		{expr: `foo{a="b}`, wantErr: "unterminated string"},
		{expr: ``, wantErr: "empty expression"},
	}
	for _, tt := range tests {
		t.Run(tt.expr, func(t *testing.T) {
			got, err := parsePromQL(tt.expr)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("parsePromQL(%q) error = %v, want %q", tt.expr, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("parsePromQL(%q): %v", tt.expr, err)
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("parsePromQL(%q) mismatch (-want +got):\n%s", tt.expr, diff)
			}
		})
	}
}

// checkPromQL parses expr and reports every metric and label it references
// that the code does not emit.
func checkPromQL(e emitted, expr string) (promRefs, []error) {
	r, err := parsePromQL(expr)
	if err != nil {
		return r, []error{fmt.Errorf("parse %q: %w", expr, err)}
	}
	var errs []error
	if len(r.Metrics) == 0 {
		errs = append(errs, fmt.Errorf("%q references no metric", expr))
	}
	for _, m := range r.Metrics {
		if _, ok := e.Prometheus[m]; !ok {
			errs = append(errs, fmt.Errorf("metric %s is not emitted by the code (as a Prometheus series)", m))
		}
	}
	for _, l := range r.Labels {
		if !e.PromLabels[l] {
			errs = append(errs, fmt.Errorf("label %s is not an attribute the code sets", l))
		}
	}
	return r, errs
}

// signozFilterKeys lists the attribute keys a SigNoz filter expression
// (`a.b = 'x' AND c EXISTS AND d REGEXP '...'`) refers to.
func signozFilterKeys(expr string) ([]string, error) {
	// Drop quoted values first, so that their contents are not taken for
	// keys.
	var b strings.Builder
	for i := 0; i < len(expr); i++ {
		if expr[i] == '\'' || expr[i] == '"' {
			q := expr[i]
			j := i + 1
			for j < len(expr) && expr[j] != q {
				if expr[j] == '\\' {
					j++
				}
				j++
			}
			if j >= len(expr) {
				return nil, fmt.Errorf("unterminated string in %q", expr)
			}
			b.WriteString(" '' ")
			i = j
			continue
		}
		b.WriteByte(expr[i])
	}
	ops := map[string]bool{"=": true, "!=": true, ">": true, ">=": true, "<": true, "<=": true,
		"REGEXP": true, "EXISTS": true, "IN": true, "NOT": true, "LIKE": true, "ILIKE": true, "CONTAINS": true, "BETWEEN": true, "HAS": true}
	boolWords := map[string]bool{"AND": true, "OR": true, "NOT": true}
	fields := strings.FieldsFunc(b.String(), func(r rune) bool { return unicode.IsSpace(r) || r == '(' || r == ')' || r == ',' })
	var keys []string
	for i, f := range fields {
		if i+1 < len(fields) && ops[strings.ToUpper(fields[i+1])] && !ops[strings.ToUpper(f)] && !boolWords[strings.ToUpper(f)] && f != "''" {
			keys = append(keys, f)
		}
	}
	if strings.TrimSpace(expr) != "" && len(keys) == 0 {
		return nil, fmt.Errorf("no attribute key found in %q", expr)
	}
	return keys, nil
}

func TestSigNozFilterKeys(t *testing.T) {
	tests := []struct {
		expr string
		want []string
	}{
		{"", nil},
		{"error.type EXISTS", []string{"error.type"}},
		{"http.route REGEXP '^/(customers|partners)(/.*)?$' AND service.name = 'a = b'", []string{"http.route", "service.name"}},
		{"http.response.status_code >= 500", []string{"http.response.status_code"}},
		{"tenant.id IN ('a', 'b') AND NOT x.y = 1", []string{"tenant.id", "x.y"}},
	}
	for _, tt := range tests {
		got, err := signozFilterKeys(tt.expr)
		if err != nil {
			t.Errorf("signozFilterKeys(%q): %v", tt.expr, err)
			continue
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("signozFilterKeys(%q) mismatch (-want +got):\n%s", tt.expr, diff)
		}
	}
	if _, err := signozFilterKeys("a = 'unterminated"); err == nil {
		t.Error("unterminated string accepted")
	}
}
