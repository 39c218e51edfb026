//go:build !linux

package wire

import "sync/atomic"

// Outside Linux every session relays with the copier goroutines.

type loopRelay struct{}

func (s *session) startLoopRelay(*frontendCopier, *backendCopier, chan<- *endReason) bool {
	return false
}

func (s *session) takeBack(*loopRelay) {}

func (rel *loopRelay) stop() {}

var loopStats struct{ sessions, waits atomic.Int64 }
