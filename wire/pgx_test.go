package wire

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/internal/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgproto3"
)

func TestSimpleMultiStatement(t *testing.T) {
	p := startProxy(t, pgtest.Start(t), nil)
	c := p.connect(t)
	ctx := ctxT(t)
	pid := c.PgConn().PID()

	const q = "select 1; select g from generate_series(1,3) g; ; create temp table simple_t(x int); begin; select nope"
	_, err := c.PgConn().Exec(ctx, q).ReadAll()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "42703" {
		t.Fatalf("Exec: got %v, want undefined column 42703", err)
	}
	got := p.rec.waitStmts(t, pid, 5)
	want := []struct {
		tag     string
		rows    int64
		outcome Outcome
		state   string
	}{
		{"SELECT 1", 1, OutcomeComplete, ""},
		{"SELECT 3", 3, OutcomeComplete, ""},
		{"CREATE TABLE", 0, OutcomeComplete, ""},
		{"BEGIN", 0, OutcomeComplete, ""},
		{"", 0, OutcomeError, "42703"},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d statements, want %d:\n%+v", len(got), len(want), got)
	}
	for i, w := range want {
		g := got[i]
		if g.Text != q || g.Index != i || g.Protocol != ProtocolSimple {
			t.Errorf("stmt %d: text %q index %d protocol %d", i, g.Text, g.Index, g.Protocol)
		}
		if g.CommandTag != w.tag || g.Rows != w.rows || g.Outcome != w.outcome || g.SQLState != w.state {
			t.Errorf("stmt %d: tag %q rows %d outcome %d state %q; want %+v", i, g.CommandTag, g.Rows, g.Outcome, g.SQLState, w)
		}
		// The whole Query ran in a transaction that failed at its end.
		if g.TxStatus != TxFailed || g.LastInBatch != (i == len(want)-1) {
			t.Errorf("stmt %d: TxStatus %q, LastInBatch %v; want %q, only the last", i, g.TxStatus, g.LastInBatch, TxFailed)
		}
		if g.End.Before(g.Start) || g.BytesOut <= 0 {
			t.Errorf("stmt %d: start %v end %v bytes out %d", i, g.Start, g.End, g.BytesOut)
		}
	}
	if got[0].BytesIn != int64(len(q)+6) {
		t.Errorf("BytesIn %d, want %d", got[0].BytesIn, len(q)+6)
	}
	if got[4].Severity != "ERROR" || !strings.Contains(got[4].ErrorMessage, "nope") {
		t.Errorf("error event: severity %q message %q", got[4].Severity, got[4].ErrorMessage)
	}

	// An empty query, then the rollback, observed as their own Query.
	if _, err := c.PgConn().Exec(ctx, "rollback").ReadAll(); err != nil {
		t.Fatal(err)
	}
	if _, err := c.PgConn().Exec(ctx, "").ReadAll(); err != nil {
		t.Fatal(err)
	}
	got = p.rec.waitStmts(t, pid, 7)
	if g := got[5]; g.CommandTag != "ROLLBACK" || g.TxStatus != TxIdle || g.Index != 0 {
		t.Errorf("rollback: %+v", g)
	}
	if g := got[6]; g.Outcome != OutcomeEmpty {
		t.Errorf("empty query: outcome %d", g.Outcome)
	}

	// Connections shows the session with what startup and ParameterStatus said.
	var found bool
	for _, cs := range p.Connections() {
		if cs.BackendPID == pid {
			found = true
			if cs.State != "idle" || cs.User != p.pg.User || cs.Database != p.pg.Database || cs.Statements != 7 {
				t.Errorf("Connections: %+v", cs)
			}
		}
	}
	if !found {
		t.Errorf("Connections has no session with pid %d: %+v", pid, p.Connections())
	}
}

func TestExtended(t *testing.T) {
	p := startProxy(t, pgtest.Start(t), nil)
	c := p.connect(t)
	ctx := ctxT(t)
	pid := c.PgConn().PID()

	// QueryExecModeExec: unnamed statement, Parse+Bind+Execute in one batch.
	var n int
	if err := c.QueryRow(ctx, "select $1::int + 1", pgx.QueryExecModeExec, 41).Scan(&n); err != nil || n != 42 {
		t.Fatalf("QueryRow exec mode: %d, %v", n, err)
	}
	// QueryExecModeCacheStatement (the default): Parse+Describe+Sync, then
	// Bind+Execute+Sync, then the second run reuses the statement.
	for i := 0; i < 2; i++ {
		if err := c.QueryRow(ctx, "select g from generate_series(1, $1::int) g order by g desc limit 1", 5).Scan(&n); err != nil || n != 5 {
			t.Fatalf("QueryRow cached: %d, %v", n, err)
		}
	}
	got := p.rec.waitStmts(t, pid, 3)
	if g := got[0]; g.Text != "select $1::int + 1" || g.StatementName != "" || g.Protocol != ProtocolExtended ||
		g.CommandTag != "SELECT 1" || g.Rows != 1 || g.TxStatus != TxIdle || g.Outcome != OutcomeComplete {
		t.Errorf("exec mode statement: %+v", g)
	}
	// Both runs carry the text the statement was parsed from, and with it
	// the comment it may hold (DESIGN.md decision 5).
	for i, g := range got[1:] {
		if !strings.HasPrefix(g.Text, "select g from generate_series") || g.StatementName == "" || g.Rows != 1 || g.Fetches != 1 {
			t.Errorf("cached statement run %d: %+v", i, g)
		}
	}
	if got[1].StatementName != got[2].StatementName {
		t.Errorf("statement names differ: %q, %q", got[1].StatementName, got[2].StatementName)
	}
}

func TestBatchPipeline(t *testing.T) {
	p := startProxy(t, pgtest.Start(t), nil)
	c := p.connect(t)
	ctx := ctxT(t)
	pid := c.PgConn().PID()

	b := &pgx.Batch{}
	b.Queue("select 1")
	b.Queue("select x / (x - 2) from (values (2)) v(x)") // division by zero at run time
	b.Queue("select 3")
	b.Queue("select 4")
	err := c.SendBatch(ctx, b).Close()
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "22012" {
		t.Fatalf("batch: %v, want division_by_zero", err)
	}
	// The connection is still usable and in step.
	var n int
	if err := c.QueryRow(ctx, "select 5").Scan(&n); err != nil || n != 5 {
		t.Fatalf("after failed batch: %d, %v", n, err)
	}
	got := p.rec.waitStmts(t, pid, 3)
	if len(got) != 3 {
		t.Fatalf("got %d statements, want 3 (ok, failed, next query):\n%+v", len(got), got)
	}
	if got[0].Text != "select 1" || got[0].Outcome != OutcomeComplete || got[0].TxStatus != TxIdle {
		t.Errorf("first: %+v", got[0])
	}
	if got[1].Outcome != OutcomeError || got[1].SQLState != "22012" || !strings.Contains(got[1].Text, "x - 2") {
		t.Errorf("second: %+v", got[1])
	}
	if got[2].Text != "select 5" || got[2].Outcome != OutcomeComplete {
		t.Errorf("after: %+v", got[2])
	}

	// A pipeline in pgconn terms, with a Parse error in the middle and Syncs
	// separating the batches: the batch after the failed one runs.
	pl := c.PgConn().StartPipeline(ctx)
	pl.SendQueryParams("select 10", nil, nil, nil, nil)
	pl.SendQueryParams("select from nosuchtable", nil, nil, nil, nil)
	pl.SendQueryParams("select 11", nil, nil, nil, nil)
	pl.SendPipelineSync()
	pl.SendQueryParams("select 12", nil, nil, nil, nil)
	pl.SendPipelineSync()
	if err := pl.Flush(); err != nil {
		t.Fatal(err)
	}
	var results []string
	for {
		res, err := pl.GetResults()
		if err != nil {
			results = append(results, "err")
			continue
		}
		if res == nil {
			break
		}
		switch r := res.(type) {
		case *pgconn.ResultReader:
			_, err := r.Close()
			if err != nil {
				results = append(results, "err")
			} else {
				results = append(results, "ok")
			}
		case *pgconn.PipelineSync:
			results = append(results, "sync")
		}
		if len(results) > 10 {
			break
		}
	}
	if err := pl.Close(); err != nil {
		t.Logf("pipeline close: %v", err)
	}
	got = p.rec.waitStmts(t, pid, 6)
	if len(got) != 6 {
		t.Fatalf("pipeline: got %d statements, want 6:\n%+v\nresults %v", len(got), got, results)
	}
	if g := got[3]; g.Text != "select 10" || g.Outcome != OutcomeComplete {
		t.Errorf("pipeline 1: %+v", g)
	}
	if g := got[4]; g.Text != "select from nosuchtable" || g.SQLState != "42P01" {
		t.Errorf("pipeline 2: %+v", g)
	}
	if g := got[5]; g.Text != "select 12" || g.Outcome != OutcomeComplete || g.TxStatus != TxIdle {
		t.Errorf("pipeline 4: %+v", g)
	}
}

// TestErrorAtSync checks a statement whose implicit transaction fails to
// commit: a deferred foreign key is checked at the Sync that ends an
// extended-protocol batch, after the INSERT's CommandComplete. The driver
// reports the error for the INSERT, and so must the event.
func TestErrorAtSync(t *testing.T) {
	p := startProxy(t, pgtest.Start(t), nil)
	c := p.connect(t)
	ctx := ctxT(t)
	pid := c.PgConn().PID()

	for _, q := range []string{
		"create temp table sync_parent (id int primary key)",
		"create temp table sync_child (pid int references sync_parent deferrable initially deferred)",
	} {
		if _, err := c.Exec(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	_, err := c.Exec(ctx, "insert into sync_child values ($1)", 7)
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "23503" {
		t.Fatalf("insert: got %v, want foreign_key_violation 23503 at commit", err)
	}
	// Batches whose commit succeeds stay as they are.
	if _, err := c.Exec(ctx, "insert into sync_parent values ($1)", 7); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Exec(ctx, "insert into sync_child values ($1)", 7); err != nil {
		t.Fatal(err)
	}
	got := p.rec.waitStmts(t, pid, 5)
	if len(got) != 5 {
		t.Fatalf("got %d statements, want 5:\n%+v", len(got), got)
	}
	g := got[2]
	if !strings.HasPrefix(g.Text, "insert into sync_child") || g.Outcome != OutcomeError || g.SQLState != "23503" ||
		g.Severity != "ERROR" || g.ErrorMessage != pgErr.Message {
		t.Errorf("insert failing at commit: %+v", g)
	}
	if g.CommandTag != "" || g.Rows != 0 || g.TxStatus != TxIdle || g.End.Before(g.Start) {
		t.Errorf("insert failing at commit: tag %q rows %d tx %q start %v end %v", g.CommandTag, g.Rows, g.TxStatus, g.Start, g.End)
	}
	for _, i := range []int{3, 4} {
		if g := got[i]; g.Outcome != OutcomeComplete || g.CommandTag != "INSERT 0 1" || g.Rows != 1 {
			t.Errorf("statement %d: %+v", i, g)
		}
	}
}

func TestPortalSuspended(t *testing.T) {
	p := startProxy(t, pgtest.Start(t), nil)
	c := p.connect(t)
	ctx := ctxT(t)
	pid := c.PgConn().PID()

	// Execute with a row limit inside a transaction: PortalSuspended, then
	// the rest.
	if _, err := c.Exec(ctx, "begin"); err != nil {
		t.Fatal(err)
	}
	pl := c.PgConn().StartPipeline(ctx)
	pl.SendPrepare("sus", "select g from generate_series(1,10) g", nil)
	pl.SendPipelineSync()
	if err := pl.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		res, err := pl.GetResults()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := res.(*pgconn.PipelineSync); ok {
			break
		}
	}
	if err := pl.Close(); err != nil {
		t.Fatal(err)
	}
	// Raw Bind/Execute(3)/Execute(0)/Sync through the frontend.
	fe := c.PgConn().Frontend()
	fe.Send(&pgproto3.Bind{PreparedStatement: "sus", DestinationPortal: "cur"})
	fe.Send(&pgproto3.Execute{Portal: "cur", MaxRows: 3})
	fe.Send(&pgproto3.Execute{Portal: "cur"})
	fe.Send(&pgproto3.Sync{})
	if err := fe.Flush(); err != nil {
		t.Fatal(err)
	}
	for {
		msg, err := fe.Receive()
		if err != nil {
			t.Fatal(err)
		}
		if _, ok := msg.(*pgproto3.ReadyForQuery); ok {
			break
		}
	}
	if _, err := c.Exec(ctx, "commit"); err != nil {
		t.Fatal(err)
	}
	// The portal run in two Executes is one statement: 10 rows, though the
	// server's tag counts only the last Execute's.
	got := p.rec.waitStmts(t, pid, 3)
	if g := got[1]; g.Outcome != OutcomeComplete || g.Rows != 10 || g.CommandTag != "SELECT 7" || g.Fetches != 2 ||
		g.PortalName != "cur" || g.StatementName != "sus" || g.TxStatus != TxInBlock {
		t.Errorf("resumed portal: %+v", g)
	}
	if g := got[2]; g.CommandTag != "COMMIT" {
		t.Errorf("commit: %+v", g)
	}
}

func TestCopyFromTo(t *testing.T) {
	p := startProxy(t, pgtest.Start(t), nil)
	c := p.connect(t)
	ctx := ctxT(t)
	pid := c.PgConn().PID()

	if _, err := c.Exec(ctx, "create temp table cp(id int, name text)"); err != nil {
		t.Fatal(err)
	}
	rows := make([][]any, 1000)
	for i := range rows {
		rows[i] = []any{i, fmt.Sprintf("name %d", i)}
	}
	n, err := c.CopyFrom(ctx, pgx.Identifier{"cp"}, []string{"id", "name"}, pgx.CopyFromRows(rows))
	if err != nil || n != 1000 {
		t.Fatalf("CopyFrom: %d, %v", n, err)
	}
	var buf bytes.Buffer
	tag, err := c.PgConn().CopyTo(ctx, &buf, "copy cp to stdout")
	if err != nil || tag.RowsAffected() != 1000 {
		t.Fatalf("CopyTo: %v, %v", tag, err)
	}
	if !strings.HasPrefix(buf.String(), "0\tname 0\n1\tname 1\n") {
		t.Errorf("CopyTo data starts %q", buf.String()[:20])
	}
	all := p.rec.waitStmts(t, pid, 3)
	var copies []Statement
	for _, s := range all {
		if s.Copy {
			copies = append(copies, s)
		}
	}
	if len(copies) != 2 {
		t.Fatalf("got %d COPY statements, want 2: %+v", len(copies), all)
	}
	if g := copies[0]; g.CommandTag != "COPY 1000" || g.Rows != 1000 || g.BytesIn < 10000 {
		t.Errorf("copy from: %+v", g)
	}
	if g := copies[1]; g.Rows != 1000 || g.BytesOut < int64(buf.Len()) {
		t.Errorf("copy to: %+v (data %d bytes)", g, buf.Len())
	}
}

func TestListenNotify(t *testing.T) {
	p := startProxy(t, pgtest.Start(t), nil)
	listener := p.connect(t)
	notifier := p.connect(t)
	ctx := ctxT(t)

	if _, err := listener.Exec(ctx, "listen pgtrace_chan"); err != nil {
		t.Fatal(err)
	}
	if _, err := notifier.Exec(ctx, "select pg_notify('pgtrace_chan', 'hello')"); err != nil {
		t.Fatal(err)
	}
	n, err := listener.WaitForNotification(ctx)
	if err != nil || n.Channel != "pgtrace_chan" || n.Payload != "hello" {
		t.Fatalf("notification %+v, %v", n, err)
	}
	// A notification arriving between statements matches nothing: the next
	// statement is still reported correctly.
	if _, err := notifier.Exec(ctx, "notify pgtrace_chan, 'again'"); err != nil {
		t.Fatal(err)
	}
	var x int
	if err := listener.QueryRow(ctx, "select 7").Scan(&x); err != nil || x != 7 {
		t.Fatal(x, err)
	}
	got := p.rec.waitStmts(t, listener.PgConn().PID(), 2)
	if got[1].Text != "select 7" || got[1].Rows != 1 {
		t.Errorf("after notification: %+v", got[1])
	}
}

func TestLargeResultStreams(t *testing.T) {
	p := startProxy(t, pgtest.Start(t), nil)
	c := p.connect(t)
	ctx := ctxT(t)
	pid := c.PgConn().PID()

	var before, after runtimeMem
	before.read()
	peak := startPeakSampler()
	// 110,000 rows of 1 KB: about 113 MB through the proxy. Read raw so the
	// client itself allocates nothing per row.
	rr := c.PgConn().ExecParams(ctx, "select repeat('x', 1000) from generate_series(1, 110000)", nil, nil, nil, nil)
	var total int64
	for rr.NextRow() {
		total += int64(len(rr.Values()[0]))
	}
	if _, err := rr.Close(); err != nil {
		t.Fatal(err)
	}
	peakHeap := peak()
	after.read()
	if total != 110000*1000 {
		t.Fatalf("read %d bytes of values", total)
	}
	got := p.rec.waitStmts(t, pid, 1)
	if got[0].Rows != 110000 || got[0].BytesOut < total {
		t.Errorf("statement: rows %d bytes out %d", got[0].Rows, got[0].BytesOut)
	}
	// Proxy and client share this process; neither may hold the result.
	grow := int64(peakHeap) - int64(before.heapInuse)
	allocated := after.totalAlloc - before.totalAlloc
	t.Logf("streamed %d MB: heap in use grew by at most %d KB, %d KB allocated", total>>20, grow>>10, allocated>>10)
	if grow > 16<<20 {
		t.Errorf("heap in use grew by %d MB while streaming %d MB", grow>>20, total>>20)
	}
	if allocated > 32<<20 {
		t.Errorf("%d MB allocated while streaming %d MB", allocated>>20, total>>20)
	}
}

func TestCancelRequest(t *testing.T) {
	p := startProxy(t, pgtest.Start(t), nil)
	c := p.connect(t)
	pid := c.PgConn().PID()

	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	start := time.Now()
	_, err := c.Exec(ctx, "select pg_sleep(30)")
	if err == nil {
		t.Fatal("pg_sleep(30) returned no error")
	}
	if el := time.Since(start); el > 5*time.Second {
		t.Errorf("cancel took %v", el)
	}
	got := p.rec.waitStmts(t, pid, 1)
	if g := got[0]; g.SQLState != "57014" || g.Outcome != OutcomeError || g.Duration() > 5*time.Second {
		t.Errorf("cancelled statement: %+v", g)
	}
}

func TestAuthMethods(t *testing.T) {
	pg := pgtest.Managed(t)
	p := startProxy(t, pg, nil)
	for _, tc := range []struct{ user, password string }{
		{pgtest.TrustUser, ""},
		{pgtest.MD5User, pgtest.MD5Password},
		{pgtest.PlainUser, pgtest.PlainPassword},
		{pgtest.ScramUser, pgtest.ScramPassword},
	} {
		t.Run(tc.user, func(t *testing.T) {
			c := p.connectDSN(t, p.dsn(tc.user, tc.password))
			var who string
			if err := c.QueryRow(ctxT(t), "select current_user").Scan(&who); err != nil || who != tc.user {
				t.Fatalf("current_user %q, %v", who, err)
			}
			pid := c.PgConn().PID()
			evs := p.rec.wait(t, "ConnAuthenticated", func(evs []Event) bool {
				for _, e := range evs {
					if e.Kind == ConnAuthenticated && e.Conn.BackendPID == pid {
						return true
					}
				}
				return false
			})
			for _, e := range evs {
				if e.Kind == ConnAuthenticated && e.Conn.BackendPID == pid {
					if e.Conn.User != tc.user || e.ConnectDuration <= 0 || e.Conn.TxStatus != TxIdle || !e.Conn.ClientAddr.IsValid() {
						t.Errorf("ConnAuthenticated: %+v", e)
					}
				}
			}
		})
	}
	t.Run("wrong password", func(t *testing.T) {
		ctx := ctxT(t)
		_, err := pgx.Connect(ctx, p.dsn(pgtest.ScramUser, "wrong"))
		var pgErr *pgconn.PgError
		if !errors.As(err, &pgErr) || pgErr.Code != "28P01" {
			t.Fatalf("connect with wrong password: %v", err)
		}
		p.rec.wait(t, "ConnAuthFailed", func(evs []Event) bool {
			for _, e := range evs {
				var se *ServerError
				if e.Kind == ConnAuthFailed && e.Conn.User == pgtest.ScramUser && errors.As(e.Err, &se) && se.Code == "28P01" {
					return true
				}
			}
			return false
		})
	})
}

func TestUpstreamUnreachable(t *testing.T) {
	pg := pgtest.Start(t)
	// A port nothing listens on.
	l := mustListen(t)
	dead := l.Addr().String()
	l.Close()
	p := startProxy(t, pg, func(s *Server) { s.Upstream = dead })
	_, err := pgx.Connect(ctxT(t), p.dsn("someone", "pw"))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "08001" || !strings.Contains(pgErr.Message, dead) {
		t.Fatalf("connect: %v, want 08001 naming %s", err, dead)
	}
	p.rec.wait(t, "ConnAuthFailed", func(evs []Event) bool {
		for _, e := range evs {
			if e.Kind == ConnAuthFailed && e.Err != nil && e.Conn.User == "someone" {
				return true
			}
		}
		return false
	})
}

func TestMaxClientConnections(t *testing.T) {
	p := startProxy(t, pgtest.Start(t), func(s *Server) { s.MaxClientConnections = 1 })
	c := p.connect(t)
	_, err := pgx.Connect(ctxT(t), p.dsn(p.pg.User, p.pg.Password))
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) || pgErr.Code != "53300" {
		t.Fatalf("second connection: %v, want 53300", err)
	}
	if n := p.ActiveConnections(); n != 1 {
		t.Errorf("ActiveConnections = %d, want 1", n)
	}
	// The first is unaffected.
	if _, err := c.Exec(ctxT(t), "select 1"); err != nil {
		t.Fatal(err)
	}
}

// TestQueryRightBehindStartup sends the first Query in the same write as
// the StartupMessage (a trust login needs no answer in between): its event
// must not be lost to the ReadyForQuery that ends the login.
func TestQueryRightBehindStartup(t *testing.T) {
	pg := pgtest.Managed(t)
	p := startProxy(t, pg, nil)
	conn, err := net.Dial("tcp", p.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	b, _ := (&pgproto3.StartupMessage{ProtocolVersion: pgproto3.ProtocolVersionNumber,
		Parameters: map[string]string{"user": pgtest.TrustUser, "database": pg.Database}}).Encode(nil)
	b, _ = (&pgproto3.Query{String: "select 'early'"}).Encode(b)
	if _, err := conn.Write(b); err != nil {
		t.Fatal(err)
	}
	fe := pgproto3.NewFrontend(conn, conn)
	pid := receiveUntil[*pgproto3.BackendKeyData](t, fe).ProcessID
	receiveUntil[*pgproto3.ReadyForQuery](t, fe) // the login's
	receiveUntil[*pgproto3.ReadyForQuery](t, fe) // the early Query's
	send(t, fe, &pgproto3.Query{String: "select 'late', 2"})
	receiveUntil[*pgproto3.ReadyForQuery](t, fe)
	got := p.rec.waitStmts(t, pid, 2)
	if len(got) != 2 || got[0].Text != "select 'early'" || got[1].Text != "select 'late', 2" ||
		got[0].CommandTag != "SELECT 1" || got[1].CommandTag != "SELECT 1" {
		t.Errorf("statement events: %+v", got)
	}
}

// TestExtendedCopyFromStdin runs COPY FROM STDIN through the extended
// protocol as libpq's PQexecParams and PQputCopyEnd do: Parse, Bind,
// Describe, Execute and Sync, then, once the server is in copy-in mode,
// CopyData, CopyDone and a second Sync. The server ignores the first Sync,
// so the two get one ReadyForQuery; the statements after the COPY must
// still get their own events.
func TestExtendedCopyFromStdin(t *testing.T) {
	p := startProxy(t, pgtest.Start(t), nil)
	c := p.connect(t)
	ctx := ctxT(t)
	pid := c.PgConn().PID()
	if _, err := c.Exec(ctx, "create temp table ext_copy(id int)"); err != nil {
		t.Fatal(err)
	}
	fe := c.PgConn().Frontend()
	send(t, fe, &pgproto3.Parse{Query: "copy ext_copy from stdin"}, &pgproto3.Bind{},
		&pgproto3.Describe{ObjectType: 'P'}, &pgproto3.Execute{}, &pgproto3.Sync{})
	receiveUntil[*pgproto3.CopyInResponse](t, fe)
	send(t, fe, &pgproto3.CopyData{Data: []byte("1\n2\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{})
	receiveUntil[*pgproto3.ReadyForQuery](t, fe)
	after := []string{"select generate_series(1, 1)", "select generate_series(1, 2)", "select generate_series(1, 3)"}
	for _, q := range after {
		send(t, fe, &pgproto3.Query{String: q})
		receiveUntil[*pgproto3.ReadyForQuery](t, fe)
	}

	// A COPY that fails on its data: the server leaves copy-in mode with
	// the error and discards up to the second Sync.
	send(t, fe, &pgproto3.Parse{Query: "copy ext_copy from stdin"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
	receiveUntil[*pgproto3.CopyInResponse](t, fe)
	send(t, fe, &pgproto3.CopyData{Data: []byte("not a number\n")}, &pgproto3.CopyDone{}, &pgproto3.Sync{})
	receiveUntil[*pgproto3.ErrorResponse](t, fe)
	receiveUntil[*pgproto3.ReadyForQuery](t, fe)
	send(t, fe, &pgproto3.Query{String: "select 'after the failed copy'"})
	receiveUntil[*pgproto3.ReadyForQuery](t, fe)

	got := p.rec.waitStmts(t, pid, 7)
	want := []struct{ text, tag string }{
		{"create temp table ext_copy(id int)", "CREATE TABLE"},
		{"copy ext_copy from stdin", "COPY 2"},
		{after[0], "SELECT 1"}, {after[1], "SELECT 2"}, {after[2], "SELECT 3"},
		{"copy ext_copy from stdin", ""},
		{"select 'after the failed copy'", "SELECT 1"},
	}
	if got[5].SQLState != "22P02" {
		t.Errorf("failed COPY: SQLSTATE %q, want 22P02", got[5].SQLState)
	}
	if len(got) != len(want) {
		t.Fatalf("%d statement events, want %d: %+v", len(got), len(want), got)
	}
	for i, w := range want {
		if got[i].Text != w.text || got[i].CommandTag != w.tag {
			t.Errorf("statement %d: %q %q, want %q %q", i, got[i].Text, got[i].CommandTag, w.text, w.tag)
		}
	}
	for _, cs := range p.Connections() {
		if cs.BackendPID == pid && cs.State != "idle" {
			t.Errorf("session state %q after the COPY, want idle", cs.State)
		}
	}
}

// TestCopyEndBeforeCopyInResponse runs pgx's CopyFrom, which streams the
// data and CopyDone right behind the Query without waiting for the
// CopyInResponse, and then a pipeline of two extended batches: each of
// their Syncs answers, so each statement gets its event.
func TestCopyEndBeforeCopyInResponse(t *testing.T) {
	p := startProxy(t, pgtest.Start(t), nil)
	c := p.connect(t)
	ctx := ctxT(t)
	pid := c.PgConn().PID()
	if _, err := c.Exec(ctx, "create temp table copy_early(id int)"); err != nil {
		t.Fatal(err)
	}
	for round := range 3 { // the race between CopyDone and CopyInResponse goes either way
		if _, err := c.CopyFrom(ctx, pgx.Identifier{"copy_early"}, []string{"id"}, pgx.CopyFromRows([][]any{{1}, {2}})); err != nil {
			t.Fatal(err)
		}
		fe := c.PgConn().Frontend()
		send(t, fe, &pgproto3.Parse{Query: "select 'a'"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{},
			&pgproto3.Parse{Query: "select 'b'"}, &pgproto3.Bind{}, &pgproto3.Execute{}, &pgproto3.Sync{})
		receiveUntil[*pgproto3.ReadyForQuery](t, fe)
		receiveUntil[*pgproto3.ReadyForQuery](t, fe)
		want := 1 + 3*(round+1)
		got := p.rec.waitStmts(t, pid, want)
		if len(got) != want || got[want-3].CommandTag != "COPY 2" ||
			got[want-2].Text != "select 'a'" || got[want-1].Text != "select 'b'" {
			t.Fatalf("round %d: statement events %+v", round, got)
		}
	}
}

// TestRefusedOrSkippedParseAndClose: the relay applies a Parse or Close to
// the names of prepared statements when the client sends it, so that the
// Binds behind it find their text; when the server refuses or skips it,
// the names must be as the server has them.
func TestRefusedOrSkippedParseAndClose(t *testing.T) {
	type (
		P = pgproto3.Parse
		B = pgproto3.Bind
		E = pgproto3.Execute
		S = pgproto3.Sync
		C = pgproto3.Close
	)
	for _, tc := range []struct {
		name  string
		steps [][]pgproto3.FrontendMessage // each ends with a Sync
		want  string                       // the text of the last execution
		// pipeline sends the steps between the first and the last in one
		// write, before any answer
		pipeline bool
	}{
		{"Parse of a name in use (42P05)", [][]pgproto3.FrontendMessage{
			{&P{Name: "s", Query: "select 'first'"}, &S{}},
			{&P{Name: "s", Query: "select 'second'"}, &S{}},
			{&B{PreparedStatement: "s"}, &E{}, &S{}},
		}, "select 'first'", false},
		{"Close skipped after an error", [][]pgproto3.FrontendMessage{
			{&P{Name: "s", Query: "select 'kept'"}, &S{}},
			{&P{Query: "select 1/0"}, &B{}, &E{}, &C{ObjectType: 'S', Name: "s"}, &S{}},
			{&B{PreparedStatement: "s"}, &E{}, &S{}},
		}, "select 'kept'", false},
		{"unnamed Parse skipped after an error", [][]pgproto3.FrontendMessage{
			{&P{Query: "select 'A'"}, &S{}},
			{&B{PreparedStatement: "nosuch"}, &P{Query: "select 'B'"}, &S{}},
			{&B{}, &E{}, &S{}},
		}, "select 'A'", false},
		{"Parse with a syntax error", [][]pgproto3.FrontendMessage{
			{&P{Name: "t", Query: "select 'good'"}, &S{}},
			{&C{ObjectType: 'S', Name: "t"}, &P{Name: "t", Query: "selec 'bad'"}, &S{}},
			{&P{Name: "t", Query: "select 'good again'"}, &B{PreparedStatement: "t"}, &E{}, &S{}},
		}, "select 'good again'", false},
		{"pipelined refusals, undone newest last", [][]pgproto3.FrontendMessage{
			{&P{Name: "s", Query: "select 'first'"}, &S{}},
			{&P{Name: "s", Query: "select 'second'"}, &S{}},                                     // 42P05
			{&P{Query: "select 1/0"}, &B{}, &E{}, &P{Name: "s", Query: "select 'third'"}, &S{}}, // skipped
			{&P{Name: "s", Query: "selec 'fourth'"}, &S{}},                                      // 42601
			{&B{PreparedStatement: "s"}, &E{}, &S{}},
		}, "select 'first'", true},
		{"the same text parsed again behind a skipped Parse", [][]pgproto3.FrontendMessage{
			{&P{Query: "select 'before'"}, &S{}},
			{&P{Query: "select 1/0"}, &B{}, &E{}, &P{Query: "select 'again'"}, &S{}}, // skipped
			{&P{Query: "select 'again'"}, &B{}, &E{}, &S{}},
			{&S{}},
		}, "select 'again'", true},
		{"pipelined Close and Parse, both skipped", [][]pgproto3.FrontendMessage{
			{&P{Name: "s", Query: "select 'kept'"}, &S{}},
			{&P{Query: "select 1/0"}, &B{}, &E{}, &C{ObjectType: 'S', Name: "s"}, &P{Name: "s", Query: "select 'new'"}, &S{}},
			{&B{PreparedStatement: "s"}, &E{}, &S{}},
		}, "select 'kept'", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := startProxy(t, pgtest.Start(t), nil)
			c := p.connect(t)
			fe := c.PgConn().Frontend()
			batches := tc.steps
			if tc.pipeline {
				var mid []pgproto3.FrontendMessage
				for _, step := range tc.steps[1 : len(tc.steps)-1] {
					mid = append(mid, step...)
				}
				batches = [][]pgproto3.FrontendMessage{tc.steps[0], mid, tc.steps[len(tc.steps)-1]}
			}
			for _, b := range batches {
				send(t, fe, b...)
				for _, m := range b {
					if _, ok := m.(*S); ok {
						receiveUntil[*pgproto3.ReadyForQuery](t, fe)
					}
				}
			}
			evs := p.rec.wait(t, "the last execution", func(evs []Event) bool {
				for _, st := range stmts(evs, c.PgConn().PID()) {
					if st.CommandTag == "SELECT 1" {
						return true
					}
				}
				return false
			})
			var got *Statement
			for _, st := range stmts(evs, c.PgConn().PID()) {
				if st.CommandTag == "SELECT 1" {
					got = &st
				}
			}
			if got.Text != tc.want {
				t.Errorf("the execution's text %q, want %q", got.Text, tc.want)
			}
		})
	}
}
