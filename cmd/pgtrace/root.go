package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/urfave/cli/v2"
)

//go:generate go test -run TestFlagsReferenceIsCurrent -update .

// Set at build time: go build -ldflags "-X main.version=v1.2.3 -X main.commit=abc123".
var (
	version = "dev"
	commit  = "" // when empty, the VCS revision Go stamped into the binary, if any
)

// execute runs pgtrace with args (args[0] is the program name), reports a
// failure on stderr and returns the process exit code.
func execute(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	err := run(ctx, args, stdin, stdout, stderr)
	if err != nil && !isSignal(err) {
		fmt.Fprintf(stderr, "pgtrace: %v\n", err)
	}
	return exitCode(err)
}

// run runs pgtrace with args and returns what ended it; exitCode turns that
// into the exit code. It never exits the process, so tests call it directly.
func run(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) error {
	var cfg config
	return newApp(&cfg, stdin, stdout, stderr).RunContext(ctx, withDefaultCommand(args))
}

// withDefaultCommand makes serve the default: `pgtrace` and `pgtrace --flag …`
// run `pgtrace serve …`; the help and version flags stay the app's own.
func withDefaultCommand(args []string) []string {
	if len(args) == 0 {
		return []string{"pgtrace", "serve"}
	}
	if len(args) == 1 {
		return []string{args[0], "serve"}
	}
	switch first := args[1]; {
	case first == "-h" || first == "--help" || first == "-help" ||
		first == "-v" || first == "--version" || first == "-version":
		return args
	case strings.HasPrefix(first, "-"):
		return append([]string{args[0], "serve"}, args[1:]...)
	}
	return args
}

// rootHelpFirstLine opens `pgtrace --help`.
const rootHelpFirstLine = "pgtrace without a command runs serve, the default: `pgtrace --upstream db:5432` is `pgtrace serve --upstream db:5432`.\n" +
	"`pgtrace serve --help` lists its flags."

// newApp builds the command line with its flags bound to cfg.
func newApp(cfg *config, stdin io.Reader, stdout, stderr io.Writer) *cli.App {
	onUsageError := func(c *cli.Context, err error, isSubcommand bool) error {
		name, flags := "", c.App.Flags
		if isSubcommand && c.Command != nil {
			name, flags = c.Command.Name, c.Command.Flags
		}
		return usageError(explainFlagError(name, flags, err))
	}
	serve := &cli.Command{
		Name:  "serve",
		Usage: "relay PostgreSQL clients to the upstream and observe every statement (the default command)",
		Description: "Listens on --listen for PostgreSQL clients and relays each, byte for byte, to its own connection to --upstream,\n" +
			"turning the statements it sees into traces, metrics and findings. SIGTERM or SIGINT stops it gracefully.\n\n" +
			precedence,
		Flags:        cfg.flags(),
		OnUsageError: onUsageError,
		Action: func(c *cli.Context) error {
			if err := checkServeArgs(c, cfg); err != nil {
				return err
			}
			return serve(c.Context, cfg, c.App.ErrWriter)
		},
	}
	versionCmd := &cli.Command{
		Name:  "version",
		Usage: "print the version, commit and Go version",
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageError(errors.New("version takes no arguments"))
			}
			_, err := fmt.Fprintln(c.App.Writer, "pgtrace", versionString())
			return err
		},
	}
	return &cli.App{
		Name:  "pgtrace",
		Usage: "a PostgreSQL proxy that turns queries into OpenTelemetry traces and metrics",
		Description: "Point an application's DSN at pgtrace instead of PostgreSQL and get a span per query (parented under the\n" +
			"application's trace through sqlcommenter), query fingerprints with latency histograms, slow-query and N+1 findings\n" +
			"and connection metrics, for any language and driver. Without a command, pgtrace runs serve.\n\n" +
			precedence,
		Version: versionString(),
		// The README runs `pgtrace --upstream …`: the first line says where
		// those flags are.
		CustomAppHelpTemplate: rootHelpFirstLine + "\n\n" + cli.AppHelpTemplate,
		Commands: []*cli.Command{
			serve,
			withUsageErrors(fingerprintCommand(), onUsageError),
			withUsageErrors(healthCommand(), onUsageError),
			withUsageErrors(checkCommand(), onUsageError),
			versionCmd,
		},
		Reader:          stdin,
		Writer:          stdout,
		ErrWriter:       stderr,
		HideHelpCommand: true,
		Suggest:         true,
		OnUsageError:    onUsageError,
		// run returns every error to its caller, which picks the exit code;
		// urfave/cli must never exit the process itself.
		ExitErrHandler: func(*cli.Context, error) {},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageError(fmt.Errorf("no command %q (see --help)", c.Args().First()))
			}
			return cli.ShowAppHelp(c)
		},
	}
}

// withUsageErrors makes cmd's flag errors usage errors (exit code 2) unless
// it handles them itself.
func withUsageErrors(cmd *cli.Command, onUsageError cli.OnUsageErrorFunc) *cli.Command {
	if cmd.OnUsageError == nil {
		cmd.OnUsageError = onUsageError
	}
	return cmd
}

// checkServeArgs rejects stray arguments and an invalid configuration, as
// usage errors.
func checkServeArgs(c *cli.Context, cfg *config) error {
	if c.NArg() > 0 {
		return usageError(fmt.Errorf("serve takes no arguments, got %q (see --help)", c.Args().Slice()))
	}
	if err := cfg.validate(); err != nil {
		return usageError(err)
	}
	return nil
}

// versionString is "pgtrace <version> (commit <rev>, <go version>)".
func versionString() string {
	rev := commit
	if rev == "" {
		rev = "unknown"
		if bi, ok := debug.ReadBuildInfo(); ok {
			for _, s := range bi.Settings {
				if s.Key == "vcs.revision" {
					rev = s.Value
				}
			}
		}
	}
	return fmt.Sprintf("%s (commit %s, %s %s/%s)", version, rev, runtime.Version(), runtime.GOOS, runtime.GOARCH)
}
