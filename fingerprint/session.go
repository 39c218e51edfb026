package fingerprint

import (
	"strings"

	pg "github.com/pganalyze/pg_query_go/v5"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// Session-level features: state a statement leaves on its server session
// beyond its own transaction. A pooler that lends server connections per
// transaction cannot keep them for the client (the next transaction may
// run on another connection, and the state stays behind for another
// client), so the detector reports them in transaction pool mode.
const (
	// SessionSet: SET (or SET SESSION) of a run-time parameter, not SET
	// LOCAL; set_config(name, value, false); SET SESSION CHARACTERISTICS.
	// Name is the parameter, in lower case ("" for set_config).
	SessionSet = "SET"
	// SessionListen: LISTEN. Name is the channel.
	SessionListen = "LISTEN"
	// SessionAdvisoryLock: a session-level advisory lock
	// (pg_advisory_lock, pg_try_advisory_lock and their _shared forms; the
	// _xact_ ones end with the transaction). Name is the function.
	SessionAdvisoryLock = "advisory lock"
	// SessionHoldCursor: DECLARE … WITH HOLD. Name is the cursor.
	SessionHoldCursor = "WITH HOLD cursor"
	// SessionTempTable: a temporary table, view or sequence that outlives
	// the transaction (any but a table created ON COMMIT DROP). Name is
	// the relation.
	SessionTempTable = "temporary table"
	// SessionPrepare: SQL PREPARE (not the protocol's Parse, which a
	// pooler can carry across server connections). Name is the statement.
	SessionPrepare = "PREPARE"
)

// SessionUse is one session-level feature a statement uses.
type SessionUse struct {
	Feature string // one of the Session* constants
	Name    string // what it names: the parameter, channel, function, cursor, relation or statement
}

// cursorOptHold is PostgreSQL's CURSOR_OPT_HOLD (parsenodes.h).
const cursorOptHold = 0x0020

// advisoryLocks are the functions that take a session-level advisory
// lock.
var advisoryLocks = map[string]bool{
	"pg_advisory_lock": true, "pg_advisory_lock_shared": true,
	"pg_try_advisory_lock": true, "pg_try_advisory_lock_shared": true,
}

// sessionUses lists the session-level features of stmt, whose text is
// text; nil for most statements. Function calls are looked for only when
// the text names one of interest, so that the common statement costs no
// walk of its tree.
func sessionUses(stmt *pg.Node, text string) []SessionUse {
	var out []SessionUse
	switch n := stmt.GetNode().(type) {
	case *pg.Node_VariableSetStmt:
		v := n.VariableSetStmt
		switch {
		case v.GetIsLocal():
		case v.GetKind() == pg.VariableSetKind_VAR_SET_VALUE, v.GetKind() == pg.VariableSetKind_VAR_SET_CURRENT:
			out = append(out, SessionUse{SessionSet, strings.ToLower(v.GetName())})
		case v.GetKind() == pg.VariableSetKind_VAR_SET_MULTI && strings.EqualFold(v.GetName(), "SESSION CHARACTERISTICS"):
			out = append(out, SessionUse{SessionSet, "session characteristics"})
		}
		// SET TRANSACTION, SET … TO DEFAULT and RESET leave nothing of
		// the client's behind.
	case *pg.Node_ListenStmt:
		out = append(out, SessionUse{SessionListen, n.ListenStmt.GetConditionname()})
	case *pg.Node_DeclareCursorStmt:
		if n.DeclareCursorStmt.GetOptions()&cursorOptHold != 0 {
			out = append(out, SessionUse{SessionHoldCursor, n.DeclareCursorStmt.GetPortalname()})
		}
	case *pg.Node_PrepareStmt:
		out = append(out, SessionUse{SessionPrepare, n.PrepareStmt.GetName()})
	case *pg.Node_CreateStmt:
		if r := n.CreateStmt.GetRelation(); isTemp(r) && n.CreateStmt.GetOncommit() != pg.OnCommitAction_ONCOMMIT_DROP {
			out = append(out, SessionUse{SessionTempTable, r.GetRelname()})
		}
	case *pg.Node_CreateTableAsStmt:
		if in := n.CreateTableAsStmt.GetInto(); isTemp(in.GetRel()) && in.GetOnCommit() != pg.OnCommitAction_ONCOMMIT_DROP {
			out = append(out, SessionUse{SessionTempTable, in.GetRel().GetRelname()})
		}
	case *pg.Node_SelectStmt:
		if in := n.SelectStmt.GetIntoClause(); isTemp(in.GetRel()) && in.GetOnCommit() != pg.OnCommitAction_ONCOMMIT_DROP {
			out = append(out, SessionUse{SessionTempTable, in.GetRel().GetRelname()})
		}
	case *pg.Node_ViewStmt:
		if r := n.ViewStmt.GetView(); isTemp(r) {
			out = append(out, SessionUse{SessionTempTable, r.GetRelname()})
		}
	case *pg.Node_CreateSeqStmt:
		if r := n.CreateSeqStmt.GetSequence(); isTemp(r) {
			out = append(out, SessionUse{SessionTempTable, r.GetRelname()})
		}
	}
	if !containsFold(text, "advisory") && !containsFold(text, "set_config") {
		return out
	}
	walkMessages(stmt.ProtoReflect(), func(m protoreflect.Message) {
		fc, ok := m.Interface().(*pg.FuncCall)
		if !ok {
			return
		}
		name := funcName(fc)
		switch {
		case advisoryLocks[name]:
			out = append(out, SessionUse{SessionAdvisoryLock, name})
		case name == "set_config" && len(fc.GetArgs()) == 3:
			// set_config(name, value, is_local): only a constant false
			// is known to be session-level. The parameter's name is a
			// string constant, which texts of one shape need not share
			// (Analyzer caches by shape): it is left out.
			if c := fc.GetArgs()[2].GetAConst(); c != nil && c.GetBoolval() != nil && !c.GetBoolval().GetBoolval() {
				out = append(out, SessionUse{SessionSet, ""})
			}
		}
	})
	return out
}

// isTemp reports whether r is a temporary relation.
func isTemp(r *pg.RangeVar) bool { return r != nil && r.GetRelpersistence() == "t" }

// funcName is the name of the function fc calls, without its schema, in
// lower case.
func funcName(fc *pg.FuncCall) string {
	parts := fc.GetFuncname()
	if len(parts) == 0 {
		return ""
	}
	return strings.ToLower(parts[len(parts)-1].GetString_().GetSval())
}

// containsFold reports whether s contains the lower-case ASCII word sub,
// in any case.
func containsFold(s, sub string) bool {
	for i := 0; i+len(sub) <= len(s); i++ {
		if s[i]|0x20 == sub[0] && strings.EqualFold(s[i:i+len(sub)], sub) {
			return true
		}
	}
	return false
}
