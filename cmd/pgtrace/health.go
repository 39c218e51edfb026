package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

// healthCommand is `pgtrace health`: a probe of a running pgtrace's admin
// server for places without curl (the container image's HEALTHCHECK). It
// exits 0 when the endpoint answers 200 and 1 otherwise.
func healthCommand() *cli.Command {
	var (
		adminAddr string
		ready     bool
		timeout   time.Duration
	)
	return &cli.Command{
		Name:  "health",
		Usage: "check a running pgtrace through its admin server: /healthz, or /readyz with --ready",
		Description: "Exits 0 when the endpoint answers 200 and 1 otherwise, printing the answer. A wildcard --admin-listen\n" +
			"(0.0.0.0, ::, or no host) is probed on loopback, so the serve settings can be reused as they are.\n\n" +
			precedence,
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "admin-listen", Value: "127.0.0.1:9187", Destination: &adminAddr, EnvVars: env("admin-listen"),
				Usage: "`host:port` of the admin server to probe, as given to serve"},
			&cli.BoolFlag{Name: "ready", Destination: &ready,
				Usage: "probe /readyz (upstream reachable, below the connection cap, not shutting down) instead of /healthz"},
			&cli.DurationFlag{Name: "timeout", Value: 3 * time.Second, Destination: &timeout,
				Usage: "give up after this long"},
		},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return usageError(fmt.Errorf("health takes no arguments, got %q", c.Args().Slice()))
			}
			if timeout <= 0 {
				return usageError(fmt.Errorf("--timeout: must be positive, got %v", timeout))
			}
			url, err := healthURL(adminAddr, ready)
			if err != nil {
				return usageError(err)
			}
			return probeHealth(c.Context, c.App.Writer, url, timeout)
		},
	}
}

// healthURL is the URL to probe for the admin address addr.
func healthURL(addr string, ready bool) (string, error) {
	if addr == "" {
		return "", errors.New("--admin-listen is empty: the admin server is disabled, there is nothing to probe")
	}
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return "", fmt.Errorf("--admin-listen: %q is not host:port: %w", addr, err)
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
		if ip != nil && ip.To4() == nil {
			host = "::1"
		}
	}
	path := "/healthz"
	if ready {
		path = "/readyz"
	}
	return "http://" + net.JoinHostPort(host, port) + path, nil
}

func probeHealth(ctx context.Context, w io.Writer, url string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("probe %s: %w", url, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	answer := strings.TrimSpace(string(body))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("probe %s: %s: %s", url, resp.Status, answer)
	}
	fmt.Fprintf(w, "%s: %s\n", url, answer)
	return nil
}
