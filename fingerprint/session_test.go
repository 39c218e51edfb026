package fingerprint

import (
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSessionUses(t *testing.T) {
	a := New(Config{})
	for _, tt := range []struct {
		sql  string
		want []SessionUse
	}{
		{"SET search_path TO app, public", []SessionUse{{SessionSet, "search_path"}}},
		{"SET SESSION statement_timeout = '5s'", []SessionUse{{SessionSet, "statement_timeout"}}},
		{"set Application_Name = 'x'", []SessionUse{{SessionSet, "application_name"}}},
		{"SET TIME ZONE 'UTC'", []SessionUse{{SessionSet, "timezone"}}},
		{"SET ROLE reporting", []SessionUse{{SessionSet, "role"}}},
		{"SET work_mem FROM CURRENT", []SessionUse{{SessionSet, "work_mem"}}},
		{"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", []SessionUse{{SessionSet, "session characteristics"}}},
		{"SELECT set_config('search_path', 'app', false)", []SessionUse{{SessionSet, ""}}},
		{"LISTEN orders_changed", []SessionUse{{SessionListen, "orders_changed"}}},
		{"SELECT pg_advisory_lock(42)", []SessionUse{{SessionAdvisoryLock, "pg_advisory_lock"}}},
		{"SELECT pg_catalog.pg_try_advisory_lock_shared(1, 2) AS got", []SessionUse{{SessionAdvisoryLock, "pg_try_advisory_lock_shared"}}},
		{"SELECT id FROM jobs WHERE pg_try_advisory_lock(id) LIMIT 1", []SessionUse{{SessionAdvisoryLock, "pg_try_advisory_lock"}}},
		{"DECLARE c CURSOR WITH HOLD FOR SELECT * FROM orders", []SessionUse{{SessionHoldCursor, "c"}}},
		{"CREATE TEMP TABLE scratch (id int)", []SessionUse{{SessionTempTable, "scratch"}}},
		{"CREATE TEMPORARY TABLE scratch (id int) ON COMMIT DELETE ROWS", []SessionUse{{SessionTempTable, "scratch"}}},
		{"CREATE TEMP TABLE scratch AS SELECT 1 AS one", []SessionUse{{SessionTempTable, "scratch"}}},
		{"SELECT * INTO TEMP scratch FROM orders", []SessionUse{{SessionTempTable, "scratch"}}},
		{"CREATE TEMP VIEW v AS SELECT 1", []SessionUse{{SessionTempTable, "v"}}},
		{"PREPARE find (int) AS SELECT * FROM orders WHERE id = $1", []SessionUse{{SessionPrepare, "find"}}},

		// Nothing left behind the transaction.
		{"SET LOCAL search_path TO app", nil},
		{"SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", nil},
		{"RESET search_path", nil},
		{"RESET ALL", nil},
		{"SET work_mem TO DEFAULT", nil},
		{"SELECT set_config('search_path', 'app', true)", nil},
		{"SELECT pg_advisory_xact_lock(42)", nil},
		{"SELECT pg_advisory_unlock(42)", nil},
		{"DECLARE c CURSOR FOR SELECT * FROM orders", nil},
		{"CREATE TEMP TABLE scratch (id int) ON COMMIT DROP", nil},
		{"CREATE TABLE orders_copy (id int)", nil},
		{"SELECT * INTO orders_copy FROM orders", nil},
		{"UNLISTEN *", nil},
		{"EXECUTE find(1)", nil},
		{"DEALLOCATE find", nil},
		{"SELECT 'pg_advisory_lock(1)' AS text", nil},
		{"SELECT * FROM orders WHERE id = $1", nil},
		// Not parsed: nothing claimed.
		{"SET search_path TO", nil},
	} {
		r := a.Analyze(tt.sql)
		q := r.Query(0)
		if q == nil {
			t.Errorf("%q: no query", tt.sql)
			continue
		}
		if diff := cmp.Diff(tt.want, q.Session); diff != "" {
			t.Errorf("%q: Session (-want +got):\n%s", tt.sql, diff)
		}
	}
}

// TestSessionUsesMultiStatement: each statement of a simple Query has its
// own.
func TestSessionUsesMultiStatement(t *testing.T) {
	r := New(Config{}).Analyze("BEGIN; SET LOCAL work_mem = '1MB'; LISTEN jobs; COMMIT")
	if len(r.Queries) != 4 {
		t.Fatalf("%d queries", len(r.Queries))
	}
	for i, want := range [][]SessionUse{nil, nil, {{SessionListen, "jobs"}}, nil} {
		if diff := cmp.Diff(want, r.Queries[i].Session); diff != "" {
			t.Errorf("statement %d (-want +got):\n%s", i, diff)
		}
	}
}
