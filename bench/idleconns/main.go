// Command idleconns measures a proxy's memory per idle client connection: it
// reads the proxy's resident set size (VmRSS in /proc/PID/status), opens N
// PostgreSQL connections through the proxy and leaves them idle, reads the
// RSS again and reports the difference per connection.
//
//	go run ./bench/idleconns -pid $(pgrep -n pgtrace) -dsn 'postgres://postgres@127.0.0.1:6432/postgres?sslmode=disable' -n 1000
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
)

func main() {
	if err := run(); err != nil {
		fmt.Fprintln(os.Stderr, "idleconns:", err)
		os.Exit(1)
	}
}

func run() error {
	dsn := flag.String("dsn", "", "connection string through the proxy")
	pid := flag.Int("pid", 0, "process id of the proxy whose memory is measured")
	n := flag.Int("n", 1000, "idle connections to open")
	parallel := flag.Int("parallel", 32, "connections opened at once")
	settle := flag.Duration("settle", 3*time.Second, "wait after connecting before measuring")
	label := flag.String("label", "proxy", "name printed with the result")
	flag.Parse()
	if *dsn == "" || *pid == 0 {
		return errors.New("-dsn and -pid are required")
	}

	before, err := rssKiB(*pid)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	conns := make([]*pgconn.PgConn, *n)
	errs := make([]error, *n)
	sem := make(chan struct{}, *parallel)
	var wg sync.WaitGroup
	start := time.Now()
	for i := range conns {
		wg.Add(1)
		sem <- struct{}{}
		go func() {
			defer wg.Done()
			defer func() { <-sem }()
			c, err := pgconn.Connect(ctx, *dsn)
			if err != nil {
				errs[i] = err
				return
			}
			// One round trip, so that the session is fully set up.
			if err := c.Exec(ctx, "SELECT 1").Close(); err != nil {
				errs[i] = err
			}
			conns[i] = c
		}()
	}
	wg.Wait()
	defer func() {
		for _, c := range conns {
			if c != nil {
				c.Close(context.Background())
			}
		}
	}()
	failed, first := 0, error(nil)
	for _, err := range errs {
		if err != nil {
			failed++
			if first == nil {
				first = err
			}
		}
	}
	if failed > 0 {
		return fmt.Errorf("%d of %d connections failed; the first: %w", failed, *n, first)
	}
	connectTime := time.Since(start)
	time.Sleep(*settle)
	after, err := rssKiB(*pid)
	if err != nil {
		return err
	}
	fmt.Printf("%s: %d idle connections opened in %v; RSS %d KiB -> %d KiB; %.1f KiB per connection\n",
		*label, *n, connectTime.Round(time.Millisecond), before, after, float64(after-before)/float64(*n))
	return nil
}

// rssKiB reads VmRSS of process pid.
func rssKiB(pid int) (int64, error) {
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, fmt.Errorf("read memory of process %d: %w", pid, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "VmRSS:"); ok {
			fields := strings.Fields(rest) // "12345 kB"
			if len(fields) == 0 {
				break
			}
			return strconv.ParseInt(fields[0], 10, 64)
		}
	}
	return 0, fmt.Errorf("no VmRSS in /proc/%d/status", pid)
}
