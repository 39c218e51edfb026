package detector

import "time"

// Config tunes a Detector. The zero value of every field means its default.
type Config struct {
	// SlowThreshold: a statement lasting at least this long is slow.
	// Default 100ms.
	SlowThreshold time.Duration
	// NPlusOneThreshold: executions of one fingerprint in one group (one
	// trace, or one connection without trace context) that make an N+1.
	// Default 5.
	NPlusOneThreshold int
	// NPlusOneWindow: without trace context, repetitions outside one
	// transaction count as one group only if the threshold is reached within
	// this time from the first of them. Default 1s.
	NPlusOneWindow time.Duration
	// NPlusOneMinDuration: a group is an N+1 only once its executions took
	// at least this long in total. Default 0 (any).
	NPlusOneMinDuration time.Duration
	// NPlusOneMaxGap: without trace context, at most this many other
	// statements may run between two repetitions (transaction control
	// statements do not count). Default 2.
	NPlusOneMaxGap int
	// MaxNPlusOneGroups bounds the (trace id, fingerprint) groups tracked;
	// the least recently seen is evicted first. Default 10000.
	MaxNPlusOneGroups int
	// NPlusOneGroupTTL: a trace group not seen for this long is forgotten at
	// the next Tick. Default 1m.
	NPlusOneGroupTTL time.Duration

	// IdleInTxThreshold: a connection left in transaction (status T or E)
	// this long after its last statement ended is a finding. Default 10s.
	IdleInTxThreshold time.Duration

	// ChurnThreshold short-lived connections of one application within
	// ChurnWindow make a connection_churn finding. A connection is
	// short-lived when it closes after at most ChurnMaxStatements
	// statements. Defaults 10, 10s and 2.
	ChurnThreshold     int
	ChurnWindow        time.Duration
	ChurnMaxStatements int

	// PoolMode is the proxy's --pool-mode: "transaction" looks for
	// statements that use session-level features
	// (session_state_in_transaction_pool). "", "none" and "session" do not.
	PoolMode string
	// PoolSize is the server connections per pool (--pool-size), for
	// pool_churn. Default 20.
	PoolSize int
	// PoolExhaustedThreshold: a client that waited at least this long for
	// a server connection, or gave up, makes its pool exhausted
	// (pool_exhausted). Default 1s.
	PoolExhaustedThreshold time.Duration
	// PoolEpisodeGap: a pool_exhausted episode ends once this long passes
	// without a client waiting past the threshold; the next makes a new
	// finding. Default 1m.
	PoolEpisodeGap time.Duration
	// PoolChurnWindow: more than PoolSize server connections of one pool
	// opened within this window make a pool_churn finding; the episode
	// ends once a window passes without that. Default 1m.
	PoolChurnWindow time.Duration

	// MaxFingerprints bounds the per-fingerprint statistics; when full, the
	// entries with the least total time are evicted in a batch of 1/16th.
	// Default 5000.
	MaxFingerprints int
	// MaxFindings is the size of the findings ring; the oldest is dropped
	// (and counted) first. Default 1000.
	MaxFindings int
	// MaxConnections bounds the connections tracked for idle-in-transaction
	// and the N+1 fallback; beyond it the least recently active is dropped.
	// Default 10000.
	MaxConnections int
	// MaxApplications bounds the applications tracked for churn and
	// idle-in-transaction time; the rest share the name "(other)". It
	// bounds the pools tracked too (the least recently active is
	// forgotten). Default 1000.
	MaxApplications int

	// Now is the clock, for tests. Default time.Now.
	Now func() time.Time
}

func (c Config) withDefaults() Config {
	def := func(d *time.Duration, v time.Duration) {
		if *d <= 0 {
			*d = v
		}
	}
	defInt := func(n *int, v int) {
		if *n <= 0 {
			*n = v
		}
	}
	def(&c.SlowThreshold, 100*time.Millisecond)
	defInt(&c.NPlusOneThreshold, 5)
	def(&c.NPlusOneWindow, time.Second)
	if c.NPlusOneMinDuration < 0 {
		c.NPlusOneMinDuration = 0
	}
	if c.NPlusOneMaxGap == 0 {
		c.NPlusOneMaxGap = 2
	} else if c.NPlusOneMaxGap < 0 {
		c.NPlusOneMaxGap = 0
	}
	defInt(&c.MaxNPlusOneGroups, 10000)
	def(&c.NPlusOneGroupTTL, time.Minute)
	def(&c.IdleInTxThreshold, 10*time.Second)
	defInt(&c.ChurnThreshold, 10)
	def(&c.ChurnWindow, 10*time.Second)
	defInt(&c.ChurnMaxStatements, 2)
	defInt(&c.PoolSize, 20)
	def(&c.PoolExhaustedThreshold, time.Second)
	def(&c.PoolEpisodeGap, time.Minute)
	def(&c.PoolChurnWindow, time.Minute)
	defInt(&c.MaxFingerprints, 5000)
	defInt(&c.MaxFindings, 1000)
	defInt(&c.MaxConnections, 10000)
	defInt(&c.MaxApplications, 1000)
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}
