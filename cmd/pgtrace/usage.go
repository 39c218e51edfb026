package main

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
	"github.com/xrash/smetrics"
)

// Go's flag package and urfave/cli word their errors for programmers:
// "invalid value "100" for flag -slow-query-threshold: parse error". The
// patterns below recognise them so that explainFlagError can say the same
// in pgtrace's terms: the flag with two dashes, the format it wants, an
// example, and for an unknown flag the nearest real one.
var (
	reInvalidValue = regexp.MustCompile(`^invalid (?:boolean )?value "(.*)" for (?:flag )?-([\w-]+): .*$`)
	reUnknownFlag  = regexp.MustCompile(`^flag provided but not defined: -+([\w-]+)$`)
	reNeedsValue   = regexp.MustCompile(`^flag needs an argument: -+([\w-]+)$`)
	reBadEnvValue  = regexp.MustCompile(`^could not parse "(.*)" as \w+ value from environment variable "(\w+)" for flag ([\w-]+): .*$`)
)

// explainFlagError rewrites a flag parsing error of command (its name, as
// in "serve") with flags into one line that says what to do. Errors it does
// not recognise are returned as they are, with a pointer to --help.
func explainFlagError(command string, flags []cli.Flag, err error) error {
	help := "pgtrace --help"
	if command != "" {
		help = "pgtrace " + command + " --help"
	}
	msg := err.Error()
	if m := reInvalidValue.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("--%s: %q is not %s (see %s)", m[2], m[1], wantFormat(lookupFlag(flags, m[2]), m[1]), help)
	}
	if m := reBadEnvValue.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("%s (for --%s): %q is not %s (see %s)", m[2], m[3], m[1], wantFormat(lookupFlag(flags, m[3]), m[1]), help)
	}
	if m := reNeedsValue.FindStringSubmatch(msg); m != nil {
		return fmt.Errorf("--%s needs a value (%s) (see %s)", m[1], wantFormat(lookupFlag(flags, m[1]), ""), help)
	}
	if m := reUnknownFlag.FindStringSubmatch(msg); m != nil {
		if near := nearestFlag(flags, m[1]); near != "" {
			return fmt.Errorf("unknown flag --%s: did you mean --%s? (see %s)", m[1], near, help)
		}
		return fmt.Errorf("unknown flag --%s (see %s for the flags)", m[1], help)
	}
	return fmt.Errorf("%w (see %s)", err, help)
}

// lookupFlag returns the flag of flags named name, or nil.
func lookupFlag(flags []cli.Flag, name string) cli.Flag {
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	return nil
}

// wantFormat says what kind of value f takes, with an example: "a duration
// with a unit, e.g. 100ms". got is the rejected value; a bare number given
// to a duration flag becomes the example, with units added.
func wantFormat(f cli.Flag, got string) string {
	switch f := f.(type) {
	case *cli.DurationFlag:
		example := "100ms, 2s or 1m30s"
		if isDigits(got) {
			example = got + "ms or " + got + "s"
		} else if f.Value > 0 {
			example = shortDuration(f.Value)
		}
		return "a duration with a unit, e.g. " + example
	case *cli.IntFlag:
		return fmt.Sprintf("a whole number, e.g. %d", f.Value)
	case *cli.BoolFlag:
		return "true or false"
	case *cli.StringFlag:
		// The placeholder the help shows: `host:port`, `file`.
		var want []string
		if _, rest, ok := strings.Cut(f.Usage, "`"); ok {
			if placeholder, _, ok := strings.Cut(rest, "`"); ok {
				want = append(want, placeholder)
			}
		}
		if f.Value != "" {
			want = append(want, "e.g. "+f.Value)
		}
		if len(want) == 0 {
			return "text"
		}
		return strings.Join(want, ", ")
	}
	return "a valid value"
}

// shortDuration formats d without zero units: 1m0s becomes 1m.
func shortDuration(d time.Duration) string {
	s := d.String()
	if strings.HasSuffix(s, "m0s") {
		s = strings.TrimSuffix(s, "0s")
	}
	if strings.HasSuffix(s, "h0m") {
		s = strings.TrimSuffix(s, "0m")
	}
	return s
}

func isDigits(s string) bool {
	if s == "" {
		return false
	}
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return true
}

// nearestFlag is the flag name most like name (Jaro-Winkler, as urfave/cli
// suggests commands), or "" when none is close enough to be a likely typo.
// A name whose dash-separated words all occur in a flag (--slow-threshold
// for --slow-query-threshold) counts as close.
func nearestFlag(flags []cli.Flag, name string) string {
	const minSimilarity = 0.85
	best, bestScore := "", 0.0
	for _, f := range flags {
		for _, n := range f.Names() {
			if len(n) == 1 {
				continue
			}
			score := smetrics.JaroWinkler(n, name, 0.7, 4)
			if wordsWithin(name, n) {
				score = max(score, minSimilarity)
			}
			if score > bestScore {
				best, bestScore = n, score
			}
		}
	}
	if bestScore < minSimilarity {
		return ""
	}
	return best
}

// wordsWithin reports whether every dash-separated word of name is a word
// of flag.
func wordsWithin(name, flag string) bool {
	words := strings.Split(flag, "-")
	for _, w := range strings.Split(name, "-") {
		found := false
		for _, fw := range words {
			if w == fw {
				found = true
				break
			}
		}
		if !found {
			return false
		}
	}
	return true
}
