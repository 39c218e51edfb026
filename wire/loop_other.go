//go:build !linux

package wire

import "sync/atomic"

// Outside Linux every session relays with the copier goroutines.

func (s *session) startLoopRelay(*frontendCopier, *backendCopier, chan<- *endReason) bool {
	return false
}

func (s *session) takeBack(relayLoop) {}

var loopStats struct{ sessions, waits atomic.Int64 }
