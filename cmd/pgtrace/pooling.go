package main

import (
	"context"
	"fmt"
	"log/slog"
	"net"
	"slices"
	"strings"

	"github.com/dotmac/pgtrace/pool"
	"github.com/dotmac/pgtrace/wire"
)

var poolModes = []string{"none", "session", "transaction"}

// validatePooling checks the pooling flags.
func (c *config) validatePooling(bad func(string, ...any)) {
	if !slices.Contains(poolModes, c.PoolMode) {
		bad("--pool-mode: %q is not one of %s", c.PoolMode, strings.Join(poolModes, ", "))
		return
	}
	if c.PoolWaitSpanThreshold < 0 {
		bad("--pool-wait-span-threshold: must not be negative, got %v", c.PoolWaitSpanThreshold)
	}
	if c.PoolExhaustedThreshold <= 0 {
		bad("--pool-exhausted-threshold: must be positive, got %v", c.PoolExhaustedThreshold)
	}
	if c.PoolMode == "none" {
		return
	}
	if c.AuthFile == "" {
		bad("--pool-mode %s: pgtrace authenticates clients itself in a pooled mode: give --auth-file (PgBouncer's userlist.txt), "+
			"and --auth-user to look up the users it lacks with --auth-query", c.PoolMode)
	}
	if c.PoolSize <= 0 {
		bad("--pool-size: must be positive, got %d", c.PoolSize)
	}
	if c.PoolMinIdle < 0 || c.PoolMinIdle > c.PoolSize {
		bad("--pool-min-idle: must be between 0 and --pool-size (%d), got %d", c.PoolSize, c.PoolMinIdle)
	}
	if c.PoolMaxWait <= 0 {
		bad("--pool-max-wait: must be positive, got %v", c.PoolMaxWait)
	}
	if c.ServerIdleTimeout <= 0 || c.ServerLifetime <= 0 {
		bad("--server-idle-timeout and --server-lifetime must be positive, got %v and %v", c.ServerIdleTimeout, c.ServerLifetime)
	}
	if c.MaxPreparedStatements <= 0 {
		bad("--max-prepared-statements: must be positive, got %d", c.MaxPreparedStatements)
	}
	if c.AuthType != string(pool.AuthSCRAM) && c.AuthType != string(pool.AuthMD5) {
		bad("--auth-type: %q is not one of %s, %s", c.AuthType, pool.AuthSCRAM, pool.AuthMD5)
	}
	if c.AuthUser != "" && strings.TrimSpace(c.AuthQuery) == "" {
		bad("--auth-user %s needs an --auth-query", c.AuthUser)
	}
}

// newPooler builds the pooler of a pooled mode, nil for --pool-mode none.
// hooks receive what the pools do (metrics, spans, findings).
func newPooler(ctx context.Context, cfg *config, log *slog.Logger, ws *wire.Server, hooks pool.Hooks) (*pool.Pooler, error) {
	if cfg.PoolMode == "none" {
		return nil, nil
	}
	users, err := pool.LoadUserlist(cfg.AuthFile)
	if err != nil {
		return nil, fmt.Errorf("--auth-file: %w", err)
	}
	var secrets pool.SecretSource = pool.Userlist(users)
	if cfg.AuthUser != "" {
		s, ok := users[cfg.AuthUser]
		if !ok {
			return nil, fmt.Errorf("--auth-user %s is not in --auth-file %s: its secret must be there to log in and run --auth-query", cfg.AuthUser, cfg.AuthFile)
		}
		if s.Kind == pool.SecretSCRAM {
			return nil, fmt.Errorf("--auth-user %s: its secret in --auth-file is a SCRAM verifier, which cannot log in on its own: give its password or md5 secret", cfg.AuthUser)
		}
		aq := &pool.AuthQuery{
			Query: cfg.AuthQuery,
			Login: func(ctx context.Context) (net.Conn, error) {
				c, err := ws.DialUpstream(ctx)
				if err != nil {
					return nil, err
				}
				params := map[string]string{"user": cfg.AuthUser, "database": cfg.AuthDatabase, "application_name": "pgtrace auth_query"}
				if _, err := pool.Login(ctx, c, params, pool.CredentialFor(s, nil)); err != nil {
					c.Close()
					return nil, err
				}
				return c, nil
			},
		}
		secrets = pool.Sources{pool.Userlist(users), aq}
	}
	resetQuery := cfg.ServerResetQuery
	return pool.New(pool.Config{
		Mode:                    pool.Mode(cfg.PoolMode),
		Size:                    cfg.PoolSize,
		MinIdle:                 cfg.PoolMinIdle,
		MaxWait:                 cfg.PoolMaxWait,
		IdleTimeout:             cfg.ServerIdleTimeout,
		Lifetime:                cfg.ServerLifetime,
		ResetQuery:              resetQuery,
		NoResetQuery:            resetQuery == "",
		MaxPreparedStatements:   cfg.MaxPreparedStatements,
		IgnoreStartupParameters: splitList(cfg.IgnoreStartupParams),
		Secrets:                 secrets,
		Auth:                    pool.AuthMethod(cfg.AuthType),
		Hooks:                   hooks,
		Logger:                  log,
	}, ws.DialUpstream)
}

// splitList splits a comma-separated flag value, dropping blanks.
func splitList(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}
