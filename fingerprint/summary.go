package fingerprint

import (
	"sort"
	"strings"

	pg "github.com/pganalyze/pg_query_go/v5"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// maxSummary bounds db.query.summary (OTel recommends keeping it short; 255
// fits every backend's attribute limit).
const maxSummary = 255

// statementOperation names the operation of a parsed statement
// (db.operation.name). Data-modifying statements and transaction control are
// read from the tree, so WITH … INSERT is an INSERT; everything else from the
// statement's leading keywords.
func statementOperation(stmt *pg.Node, text string) string {
	switch n := stmt.GetNode().(type) {
	case *pg.Node_SelectStmt:
		return "SELECT"
	case *pg.Node_InsertStmt:
		return "INSERT"
	case *pg.Node_UpdateStmt:
		return "UPDATE"
	case *pg.Node_DeleteStmt:
		return "DELETE"
	case *pg.Node_MergeStmt:
		return "MERGE"
	case *pg.Node_TransactionStmt:
		switch n.TransactionStmt.GetKind() {
		case pg.TransactionStmtKind_TRANS_STMT_BEGIN, pg.TransactionStmtKind_TRANS_STMT_START:
			return "BEGIN"
		case pg.TransactionStmtKind_TRANS_STMT_COMMIT:
			return "COMMIT"
		case pg.TransactionStmtKind_TRANS_STMT_ROLLBACK, pg.TransactionStmtKind_TRANS_STMT_ROLLBACK_TO:
			return "ROLLBACK"
		case pg.TransactionStmtKind_TRANS_STMT_SAVEPOINT:
			return "SAVEPOINT"
		case pg.TransactionStmtKind_TRANS_STMT_RELEASE:
			return "RELEASE"
		case pg.TransactionStmtKind_TRANS_STMT_PREPARE:
			return "PREPARE TRANSACTION"
		case pg.TransactionStmtKind_TRANS_STMT_COMMIT_PREPARED:
			return "COMMIT PREPARED"
		case pg.TransactionStmtKind_TRANS_STMT_ROLLBACK_PREPARED:
			return "ROLLBACK PREPARED"
		}
	case *pg.Node_VariableSetStmt:
		if k := n.VariableSetStmt.GetKind(); k == pg.VariableSetKind_VAR_RESET || k == pg.VariableSetKind_VAR_RESET_ALL {
			return "RESET"
		}
		return "SET"
	case *pg.Node_VariableShowStmt:
		return "SHOW"
	case *pg.Node_CopyStmt:
		return "COPY"
	case *pg.Node_CallStmt:
		return "CALL"
	case *pg.Node_ExplainStmt:
		return "EXPLAIN"
	}
	return lexOperation(text)
}

// statementTables returns the relations a parsed statement names, in the
// order they appear in its text, without duplicates and without references
// to its own CTEs. Names are schema-qualified when the text qualifies them.
func statementTables(stmt *pg.Node) []string {
	type rel struct {
		name string
		loc  int32
	}
	var (
		rels []rel
		ctes map[string]bool
	)
	walkMessages(stmt.ProtoReflect(), func(m protoreflect.Message) {
		switch v := m.Interface().(type) {
		case *pg.RangeVar:
			name := v.GetRelname()
			if s := v.GetSchemaname(); s != "" {
				name = s + "." + name
			}
			if name != "" {
				rels = append(rels, rel{name, v.GetLocation()})
			}
		case *pg.CommonTableExpr:
			if ctes == nil {
				ctes = make(map[string]bool)
			}
			ctes[v.GetCtename()] = true
		}
	})
	sort.SliceStable(rels, func(i, j int) bool { return rels[i].loc < rels[j].loc })
	var tables []string
	for _, r := range rels {
		if ctes[r.name] {
			continue
		}
		tables = appendUnique(tables, r.name)
	}
	return tables
}

// walkMessages calls f for m and every message below it, depth first.
func walkMessages(m protoreflect.Message, f func(protoreflect.Message)) {
	f(m)
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		if fd.Kind() != protoreflect.MessageKind && fd.Kind() != protoreflect.GroupKind {
			return true
		}
		switch {
		case fd.IsMap():
		case fd.IsList():
			l := v.List()
			for i := 0; i < l.Len(); i++ {
				walkMessages(l.Get(i).Message(), f)
			}
		default:
			walkMessages(v.Message(), f)
		}
		return true
	})
}

// summarize builds db.query.summary: the operation followed by the tables,
// cut at a word boundary to maxSummary bytes.
func summarize(op string, tables []string) string {
	var b strings.Builder
	b.WriteString(op)
	for _, t := range tables {
		if b.Len()+1+len(t) > maxSummary {
			break
		}
		if b.Len() > 0 {
			b.WriteByte(' ')
		}
		b.WriteString(t)
	}
	s := b.String()
	if len(s) > maxSummary {
		s = s[:maxSummary]
	}
	return s
}
