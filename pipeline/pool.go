package pipeline

import (
	"time"

	"github.com/dotmac/pgtrace/detector"
	"github.com/dotmac/pgtrace/pool"
)

// In a pooled mode the pools report to the pipeline too: their hooks feed
// the exporter's pool metrics and the detector's pool findings, which take
// the findings' one route (report); every tick, the detector sees the
// pools' waiting clients.

// poolStats is the pools' state (pool.Pooler.Stats), once WatchPools set
// it.
type poolStats = func() []pool.Stats

// PoolHooks returns the hooks a pooler calls (pool.Config.Hooks): the
// exporter records the pool metrics, the detector looks for exhausted and
// churning pools, and what it finds is counted and logged as every
// finding is. They run on the pool's session goroutines, concurrently,
// and never block on the pipeline's dispatcher.
func (p *Pipeline) PoolHooks() pool.Hooks {
	var exp pool.Hooks
	if p.cfg.Exporter != nil {
		exp = p.cfg.Exporter.PoolHooks()
	}
	det := p.cfg.Detector
	observe := func(ev detector.PoolEvent) {
		if det != nil {
			p.report(det.ObservePool(ev))
		}
	}
	// Most waits are short (none at all when a connection is idle): they
	// cannot make a pool exhausted, and do not take the detector's lock.
	var threshold time.Duration
	if det != nil {
		threshold = det.Config().PoolExhaustedThreshold
	}
	return pool.Hooks{
		Waited: func(key pool.Key, start time.Time, d time.Duration, timedOut bool) {
			if exp.Waited != nil {
				exp.Waited(key, start, d, timedOut)
			}
			if timedOut || d >= threshold {
				observe(detector.PoolEvent{Kind: detector.PoolWaited, Pool: key.Name(), Time: start.Add(d), Start: start, Wait: d, TimedOut: timedOut})
			}
		},
		Created: func(key pool.Key, d time.Duration, err error) {
			if exp.Created != nil {
				exp.Created(key, d, err)
			}
			if err == nil {
				observe(detector.PoolEvent{Kind: detector.PoolOpened, Pool: key.Name()})
			}
		},
		Used: func(key pool.Key, d time.Duration) {
			if exp.Used != nil {
				exp.Used(key, d)
			}
		},
		Closed: func(key pool.Key, reason string) {
			if exp.Closed != nil {
				exp.Closed(key, reason)
			}
			observe(detector.PoolEvent{Kind: detector.PoolClosed, Pool: key.Name(), Reason: reason})
		},
	}
}

// WatchPools gives the pipeline the pools' state (pool.Pooler.Stats): the
// exporter reports it on each metric collection, and every tick of Run
// the detector checks for clients waiting too long.
func (p *Pipeline) WatchPools(stats func() []pool.Stats) {
	if p.cfg.Exporter != nil {
		p.cfg.Exporter.ObservePools(stats)
	}
	p.pools.Store(&stats)
}

// tickPools shows the detector each pool's waiting clients.
func (p *Pipeline) tickPools(now time.Time) {
	sp := p.pools.Load()
	if sp == nil {
		return
	}
	for _, st := range (*sp)() {
		p.report(p.cfg.Detector.ObservePool(detector.PoolEvent{Kind: detector.PoolWaiting, Pool: st.Name, Time: now,
			Start: st.WaitingSince, Waiting: st.Waiting}))
	}
}
