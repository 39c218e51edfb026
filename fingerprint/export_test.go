package fingerprint

import (
	"hash/maphash"
	"strings"
)

// hashFor is the cache key of sql as Analyze computes it.
func hashFor(a *Analyzer, sql string) uint64 {
	return maphash.String(a.seed, strings.TrimSpace(scan(sql).body))
}
