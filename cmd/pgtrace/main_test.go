package main

import (
	"testing"

	"github.com/dotmac/pgtrace/internal/pgtest"
)

func TestMain(m *testing.M) { pgtest.Main(m) }
