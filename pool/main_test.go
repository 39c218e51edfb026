package pool

import (
	"testing"

	"github.com/dotmac/pgtrace/internal/pgtest"
)

// TestMain stops the managed PostgreSQL cluster after the tests. One per
// package: the tests of every file of pool share it.
func TestMain(m *testing.M) { pgtest.Main(m) }
