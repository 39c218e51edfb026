// Command suitediff compares the outcomes of one Go test suite run against
// several targets: scripts/pgx-suite.sh runs pgx's tests directly, through
// PgBouncer and through pgtrace, each with `go test -json`, and this reads
// the three streams.
//
// Usage: suitediff [-base NAME] [-ref NAME] NAME=FILE...
//
//	suitediff -hung FILE
//	suitediff -diff-tests [-base NAME] [-ref NAME] NAME=FILE...
//	suitediff -tally NAME=FILE...
//
// It prints, as Markdown: per target, how many tests (subtests included)
// passed, failed and were skipped, and how many top-level tests failed;
// then, for the target named by -base (pgtrace) against -ref (pgbouncer),
// the tests that fail through one and not the other, each with the first
// error line it printed; and the tests that fail in every target. A test
// that started and never ended (its package timed out or panicked) counts
// as failed. Exit status 0 whatever the outcomes, 1 when a file cannot be
// read: the caller judges.
//
// With -hung, it prints the top-level tests that a `go test -timeout`
// panic in FILE listed as running, one a line, for the caller to run the
// package again without them (go test -skip).
//
// With -diff-tests, it prints the top-level tests with a test or subtest
// that fails through one of -base and -ref and not the other, as
// "package<TAB>test" lines, for the caller to run them again.
//
// With -tally, a NAME may come with several files (runs again of the same
// tests): it prints, per top-level test, how many of each NAME's runs it
// failed.
package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"slices"
	"strings"
)

// event is one line of `go test -json` (cmd/test2json).
type event struct {
	Action  string
	Package string
	Test    string
	Output  string
}

// result is one test's outcome and what it printed.
type result struct {
	outcome string // pass, fail, skip, or "" while running
	output  []string
}

// run is one target's results, by "package test".
type run struct {
	name     string
	tests    map[string]*result
	packages map[string]string // package outcome
}

func main() {
	base := flag.String("base", "pgtrace", "target whose failures must all be failures of -ref too")
	ref := flag.String("ref", "pgbouncer", "target to compare -base with")
	hung := flag.String("hung", "", "print the top-level tests a test timeout in this go test -json file caught running")
	diffTests := flag.Bool("diff-tests", false, "print the top-level tests whose outcomes differ between -base and -ref")
	tallyRuns := flag.Bool("tally", false, "count each top-level test's failures over the runs of each NAME")
	flag.Parse()
	if *hung != "" {
		names, err := hungTests(*hung)
		if err != nil {
			fmt.Fprintf(os.Stderr, "suitediff: %v\n", err)
			os.Exit(1)
		}
		for _, n := range names {
			fmt.Println(n)
		}
		return
	}
	if flag.NArg() == 0 {
		fmt.Fprintln(os.Stderr, "usage: suitediff [-base NAME] [-ref NAME] NAME=FILE...")
		os.Exit(2)
	}
	var runs []*run
	for _, arg := range flag.Args() {
		name, file, ok := strings.Cut(arg, "=")
		if !ok {
			fmt.Fprintf(os.Stderr, "suitediff: %q is not NAME=FILE\n", arg)
			os.Exit(2)
		}
		r, err := readRun(name, file)
		if err != nil {
			fmt.Fprintf(os.Stderr, "suitediff: %v\n", err)
			os.Exit(1)
		}
		runs = append(runs, r)
	}
	switch {
	case *diffTests:
		printDiffTests(os.Stdout, runs, *base, *ref)
	case *tallyRuns:
		tally(os.Stdout, runs)
	default:
		report(os.Stdout, runs, *base, *ref)
	}
}

func readRun(name, file string) (*run, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("read %s results: %w", name, err)
	}
	defer f.Close()
	r := &run{name: name, tests: map[string]*result{}, packages: map[string]string{}}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		line := sc.Bytes()
		if len(line) == 0 || line[0] != '{' {
			continue // go test's own output (build errors) outside the stream
		}
		var e event
		if err := json.Unmarshal(line, &e); err != nil {
			return nil, fmt.Errorf("%s: decode %q: %w", file, line, err)
		}
		if e.Test == "" {
			switch e.Action {
			case "pass", "fail", "skip":
				r.packages[e.Package] = e.Action
			}
			continue
		}
		key := e.Package + " " + e.Test
		t := r.tests[key]
		if t == nil {
			t = &result{}
			r.tests[key] = t
		}
		switch e.Action {
		case "pass", "fail", "skip":
			t.outcome = e.Action
		case "output":
			t.output = append(t.output, strings.TrimRight(e.Output, "\n"))
		}
	}
	if err := sc.Err(); err != nil && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read %s: %w", file, err)
	}
	for _, t := range r.tests {
		if t.outcome == "" {
			t.outcome = "fail" // never ended: its package timed out or crashed
			t.output = append(t.output, "(the test never ended: its package timed out or crashed)")
		}
	}
	return r, nil
}

// hungTests reads the "running tests:" list of a test binary's timeout
// panic ("panic: test timed out after 4m0s\n\trunning tests:\n\t\tTestX (4m0s)").
func hungTests(file string) ([]string, error) {
	f, err := os.Open(file)
	if err != nil {
		return nil, fmt.Errorf("read go test output: %w", err)
	}
	defer f.Close()
	var names []string
	seen := map[string]bool{}
	listing := false
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	for sc.Scan() {
		var e event
		if json.Unmarshal(sc.Bytes(), &e) != nil || e.Action != "output" {
			continue
		}
		line := strings.TrimRight(e.Output, "\n")
		switch {
		case strings.TrimSpace(line) == "running tests:":
			listing = true
		case listing && strings.HasPrefix(line, "\t"):
			name, _, _ := strings.Cut(strings.TrimSpace(line), " ")
			top, _, _ := strings.Cut(name, "/")
			if top != "" && !seen[top] {
				seen[top] = true
				names = append(names, top)
			}
		default:
			listing = false
		}
	}
	return names, sc.Err()
}

func (r *run) failed() map[string]bool {
	m := map[string]bool{}
	for k, t := range r.tests {
		if t.outcome == "fail" {
			m[k] = true
		}
	}
	return m
}

// reason is the first message a failed test printed that says why, with
// the server's error when the message goes on to one.
func (t *result) reason() string {
	for i, l := range t.output {
		s := strings.TrimSpace(l)
		switch {
		case strings.HasPrefix(s, "Error:"):
			// testify: "Error: <message>", often continued on the next
			// lines, up to the next "Name:" field.
			return clip(strings.TrimPrefix(s, "Error:"), continuation(t.output[i+1:], true))
		case strings.HasPrefix(s, "panic:"), strings.Contains(s, "test timed out"), strings.HasPrefix(s, "(the test never ended"):
			return clip(s, nil)
		case s == "got:" && i+1 < len(t.output):
			// An example's output: its first line.
			return clip("example printed: "+strings.TrimSpace(t.output[i+1]), nil)
		}
	}
	for i, l := range t.output { // t.Fatal and friends: "file_test.go:12: message"
		s := strings.TrimSpace(l)
		if strings.HasPrefix(s, "===") || strings.HasPrefix(s, "---") || s == "" || strings.HasPrefix(s, "Error Trace:") {
			continue
		}
		if m, ok := goMessage(s); ok {
			return clip(m, continuation(t.output[i+1:], false))
		}
	}
	return "(no message)"
}

// goMessage is the message of a "file.go:12: message" line.
func goMessage(s string) (string, bool) {
	_, msg, ok := strings.Cut(s, ".go:")
	if !ok {
		return "", false
	}
	_, m, ok := strings.Cut(msg, ": ")
	return m, ok
}

// continuation is the lines that go on with a message: up to the next
// message, the next test's line, or (testify) the next field.
func continuation(lines []string, testify bool) []string {
	var out []string
	for _, l := range lines {
		n := strings.TrimSpace(l)
		if n == "" {
			continue // a blank line inside the message (an SQL text's)
		}
		if strings.HasPrefix(n, "===") || strings.HasPrefix(n, "---") {
			break
		}
		if _, ok := goMessage(n); ok && !testify {
			break
		}
		if testify && (strings.HasPrefix(n, "Test:") || strings.HasPrefix(n, "Messages:")) {
			break
		}
		out = append(out, n)
		if len(out) > 40 {
			break
		}
	}
	return out
}

// clip joins a message and its continuation on one line, short enough for
// a table cell: when it runs long, the start and the server's error.
func clip(first string, more []string) string {
	s := strings.Join(strings.Fields(strings.Join(append([]string{first}, more...), " ")), " ")
	if len(s) > 220 {
		if i := strings.Index(s, "ERROR: "); i > 100 {
			tail := s[i:]
			if len(tail) > 120 {
				tail = tail[:120] + "…"
			}
			s = s[:90] + " … " + tail
		} else {
			s = s[:220] + "…"
		}
	}
	return strings.ReplaceAll(s, "|", "\\|")
}

func report(w io.Writer, runs []*run, base, ref string) {
	byName := map[string]*run{}
	fmt.Fprintln(w, "| target | tests run | pass | fail | skip | failed top-level tests | packages failed |")
	fmt.Fprintln(w, "| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
	for _, r := range runs {
		byName[r.name] = r
		n := map[string]int{}
		top := 0
		for k, t := range r.tests {
			n[t.outcome]++
			if _, test, _ := strings.Cut(k, " "); t.outcome == "fail" && !strings.Contains(test, "/") {
				top++
			}
		}
		pf := 0
		for _, o := range r.packages {
			if o == "fail" {
				pf++
			}
		}
		fmt.Fprintf(w, "| %s | %d | %d | %d | %d | %d | %d of %d |\n", r.name, len(r.tests), n["pass"], n["fail"], n["skip"], top, pf, len(r.packages))
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Tests count subtests; a parent test fails when a subtest does, so both are listed.")
	b, rf := byName[base], byName[ref]
	if b == nil || rf == nil {
		return
	}
	diff := func(title string, x, y *run) {
		fx, fy := x.failed(), y.failed()
		var keys []string
		for k := range fx {
			if !fy[k] {
				keys = append(keys, k)
			}
		}
		slices.Sort(keys)
		fmt.Fprintf(w, "\n### %s (%d)\n\n", title, len(keys))
		if len(keys) == 0 {
			fmt.Fprintln(w, "None.")
			return
		}
		fmt.Fprintf(w, "| package | test | %s outcome | first error through %s |\n| --- | --- | --- | --- |\n", y.name, x.name)
		for _, k := range keys {
			pkg, test, _ := strings.Cut(k, " ")
			other := "not run"
			if t := y.tests[k]; t != nil {
				other = t.outcome
			}
			fmt.Fprintf(w, "| %s | %s | %s | %s |\n", shortPkg(pkg), test, other, x.tests[k].reason())
		}
	}
	diff(fmt.Sprintf("Fail through %s, not through %s", base, ref), b, rf)
	diff(fmt.Sprintf("Fail through %s, not through %s", ref, base), rf, b)

	var both []string
	fb, fr := b.failed(), rf.failed()
	for k := range fb {
		if fr[k] {
			both = append(both, k)
		}
	}
	slices.Sort(both)
	fmt.Fprintf(w, "\n### Fail through both %s and %s (%d)\n\n", base, ref, len(both))
	if len(both) == 0 {
		fmt.Fprintln(w, "None.")
		return
	}
	var others []string
	for _, r := range runs {
		if r != b && r != rf {
			others = append(others, r.name)
		}
	}
	fmt.Fprintf(w, "| package | test | first error through %s | first error through %s |", base, ref)
	for _, o := range others {
		fmt.Fprintf(w, " %s |", o)
	}
	fmt.Fprint(w, "\n| --- | --- | --- | --- |")
	for range others {
		fmt.Fprint(w, " --- |")
	}
	fmt.Fprintln(w)
	for _, k := range both {
		pkg, test, _ := strings.Cut(k, " ")
		fmt.Fprintf(w, "| %s | %s | %s | %s |", shortPkg(pkg), test, b.tests[k].reason(), rf.tests[k].reason())
		for _, o := range others {
			out := "not run"
			if t := byName[o].tests[k]; t != nil {
				out = t.outcome
			}
			fmt.Fprintf(w, " %s |", out)
		}
		fmt.Fprintln(w)
	}
}

// shortPkg drops the module path: "." for the root package.
func shortPkg(pkg string) string {
	const mod = "github.com/jackc/pgx/v5"
	if pkg == mod {
		return "."
	}
	return "./" + strings.TrimPrefix(pkg, mod+"/")
}

// topLevel splits "package test/sub" into the package and the top-level
// test.
func topLevel(key string) (pkg, test string) {
	pkg, test, _ = strings.Cut(key, " ")
	test, _, _ = strings.Cut(test, "/")
	return pkg, test
}

func printDiffTests(w io.Writer, runs []*run, base, ref string) {
	var b, rf *run
	for _, r := range runs {
		switch r.name {
		case base:
			b = r
		case ref:
			rf = r
		}
	}
	if b == nil || rf == nil {
		return
	}
	fb, fr := b.failed(), rf.failed()
	seen := map[string]bool{}
	var lines []string
	for _, set := range [][2]map[string]bool{{fb, fr}, {fr, fb}} {
		for k := range set[0] {
			if set[1][k] {
				continue
			}
			pkg, test := topLevel(k)
			if l := pkg + "\t" + test; !seen[l] {
				seen[l] = true
				lines = append(lines, l)
			}
		}
	}
	slices.Sort(lines)
	for _, l := range lines {
		fmt.Fprintln(w, l)
	}
}

// tally prints, per top-level test, the failures over each name's runs.
func tally(w io.Writer, runs []*run) {
	var names []string
	count := map[string]int{} // runs per name
	fails := map[string]map[string]int{}
	ran := map[string]map[string]int{}
	reason := map[string]map[string]string{}
	for _, r := range runs {
		if count[r.name] == 0 {
			names = append(names, r.name)
		}
		count[r.name]++
		for k, t := range r.tests {
			pkg, test, _ := strings.Cut(k, " ")
			if strings.Contains(test, "/") {
				continue
			}
			key := shortPkg(pkg) + " " + test
			if fails[key] == nil {
				fails[key], ran[key], reason[key] = map[string]int{}, map[string]int{}, map[string]string{}
			}
			ran[key][r.name]++
			if t.outcome == "fail" {
				fails[key][r.name]++
				if reason[key][r.name] == "" {
					reason[key][r.name] = failReason(r, k)
				}
			}
		}
	}
	keys := slices.Sorted(maps.Keys(fails))
	fmt.Fprint(w, "| package | test |")
	for _, n := range names {
		fmt.Fprintf(w, " %s failed | first error through %s |", n, n)
	}
	fmt.Fprint(w, "\n| --- | --- |")
	for range names {
		fmt.Fprint(w, " ---: | --- |")
	}
	fmt.Fprintln(w)
	for _, k := range keys {
		pkg, test, _ := strings.Cut(k, " ")
		fmt.Fprintf(w, "| %s | %s |", pkg, test)
		for _, n := range names {
			fmt.Fprintf(w, " %d of %d | %s |", fails[k][n], ran[k][n], reason[k][n])
		}
		fmt.Fprintln(w)
	}
}

// failReason is the first error of the failed test key or, when it only
// failed through a subtest, of its first failed subtest.
func failReason(r *run, key string) string {
	if m := r.tests[key].reason(); m != "(no message)" {
		return m
	}
	subs := slices.Sorted(maps.Keys(r.tests))
	for _, k := range subs {
		if strings.HasPrefix(k, key+"/") && r.tests[k].outcome == "fail" {
			if m := r.tests[k].reason(); m != "(no message)" {
				return strings.TrimPrefix(k, key+"/") + ": " + m
			}
		}
	}
	return "(no message)"
}
