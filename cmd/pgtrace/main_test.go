package main

import (
	"os"
	"testing"

	"github.com/dotmac/pgtrace/internal/pgtest"
)

// runMainEnv makes the test binary run pgtrace's main instead of the tests,
// so that a test can start pgtrace as a real process (signals, exit codes)
// without building it: see startProcess.
const runMainEnv = "PGTRACE_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		return
	}
	pgtest.Main(m)
}
