package clients

import (
	"bytes"
	"context"
	"encoding/json"
	"os/exec"
	"strconv"
	"testing"
	"time"
)

// runClient runs a client process to its end and returns the requests it
// printed as a JSON array on its last line of output. The process is killed
// after wait.
func runClient(t *testing.T, cmd *exec.Cmd) []request {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	run := exec.CommandContext(ctx, cmd.Path, cmd.Args[1:]...)
	run.Dir, run.Env = cmd.Dir, cmd.Env
	var stdout, stderr bytes.Buffer
	run.Stdout, run.Stderr = &stdout, &stderr
	start := time.Now()
	if err := run.Run(); err != nil {
		t.Fatalf("%s: %v\nstdout:\n%s\nstderr:\n%s", run, err, stdout.String(), stderr.String())
	}
	t.Logf("%s ran in %v", run, time.Since(start).Round(time.Millisecond))
	lines := bytes.Split(bytes.TrimSpace(stdout.Bytes()), []byte("\n"))
	var reqs []request
	if err := json.Unmarshal(lines[len(lines)-1], &reqs); err != nil {
		t.Fatalf("%s printed %q: %v\nstderr:\n%s", run, stdout.String(), err, stderr.String())
	}
	for _, r := range reqs {
		if len(r.TraceID) != 32 || len(r.SpanID) != 16 {
			t.Fatalf("%s reported a request without ids: %+v", run, r)
		}
	}
	return reqs
}

func itoa(n int) string { return strconv.Itoa(n) }
