package fingerprint

import (
	"fmt"
	"hash/maphash"
	"strconv"
	"strings"
	"sync/atomic"

	lru "github.com/hashicorp/golang-lru/v2"
	pg "github.com/pganalyze/pg_query_go/v5"
)

// Defaults for the zero Config.
const (
	DefaultCacheSize          = 10000
	DefaultMaxStatementLength = 64 << 10
	DefaultTenantKey          = "tenant_id"
)

// maxKeptText is the longest body a cache entry keeps to check a hit
// against. Longer bodies are checked by a second, independent 64-bit hash
// instead, so a full cache of long statements does not hold up to
// CacheSize × MaxStatementLength bytes.
const maxKeptText = 4 << 10

// truncatedPrefix is how much of an over-long statement is normalized (by
// the lexer) for display.
const truncatedPrefix = 1 << 10

// Analyzer analyzes statement texts and caches what it learned per distinct
// comment-stripped text. It is safe for concurrent use.
type Analyzer struct {
	cfg    Config
	seed   maphash.Seed // cache key hash
	seed2  maphash.Seed // hit check of entries that do not keep their text
	shards []*lru.Cache[uint64, *entry]
	mask   uint64
	// shapes caches analyses by the text's shape (shapeHash): texts that
	// differ only in their constants, such as every simple-protocol
	// "… WHERE id = 42", share one parse. Same sharding and size as shards.
	shapes []*lru.Cache[uint64, shapeEntry]

	hits, misses, evictions atomic.Uint64
	invalidTraceparents     atomic.Uint64
	fallbacks               atomic.Uint64
}

// entry is a cached analysis. It never changes after it is stored.
type entry struct {
	text    string // the body, when at most maxKeptText long
	check   uint64 // maphash of the body under seed2, for longer bodies
	queries []*Query
	// open: the body ends in an unterminated literal or identifier, so
	// quickScan's outline of a text holding it cannot be trusted.
	open bool
}

// shapeEntry is an analysis cached by shape. check is the shape's second,
// independent hash: a false match needs both 64-bit hashes to collide.
type shapeEntry struct {
	check   uint64
	queries []*Query
}

// New returns an Analyzer for cfg; zero fields take their defaults.
func New(cfg Config) *Analyzer {
	if cfg.CacheSize <= 0 {
		cfg.CacheSize = DefaultCacheSize
	}
	if cfg.MaxStatementLength <= 0 {
		cfg.MaxStatementLength = DefaultMaxStatementLength
	}
	if cfg.TenantKey == "" {
		cfg.TenantKey = DefaultTenantKey
	}
	// Shards spread lock contention between the proxy's goroutines; each is
	// an LRU of its share of the capacity. Small caches get fewer shards so
	// the total stays CacheSize.
	n := 16
	for n > 1 && cfg.CacheSize < n*4 {
		n /= 2
	}
	a := &Analyzer{
		cfg:    cfg,
		seed:   maphash.MakeSeed(),
		seed2:  maphash.MakeSeed(),
		shards: make([]*lru.Cache[uint64, *entry], n),
		shapes: make([]*lru.Cache[uint64, shapeEntry], n),
		mask:   uint64(n - 1),
	}
	per := cfg.CacheSize / n
	for i := range a.shards {
		size := per
		if i < cfg.CacheSize%n {
			size++
		}
		c, err := lru.NewWithEvict(size, func(uint64, *entry) { a.evictions.Add(1) })
		if err != nil { // only for size <= 0, which cannot happen here
			panic(fmt.Sprintf("fingerprint: lru cache of %d: %v", size, err))
		}
		a.shards[i] = c
		sc, err := lru.New[uint64, shapeEntry](size)
		if err != nil {
			panic(fmt.Sprintf("fingerprint: lru cache of %d: %v", size, err))
		}
		a.shapes[i] = sc
	}
	return a
}

// Config returns the configuration in use, defaults filled in.
func (a *Analyzer) Config() Config { return a.cfg }

// Analyze returns what pgtrace knows of sql, a statement text as a client
// sent it (a whole simple Query string or a Parse text). It never panics and
// never fails: texts PostgreSQL's parser rejects get a lexer-based
// fingerprint (Query.Fallback). Result.Queries is shared with the cache and
// with other callers. Tags values and the trace state alias sql when it is
// at most maxAliasedText bytes long, and are copies otherwise, so that a tag
// kept for long (a tenant in a metric label set, an application in a
// finding) never keeps a long statement text in memory with it.
//
// The steady state (a text whose body is cached) costs a look at the ends of
// sql for its comments (quickScan), a hash of the body and one cache lookup;
// sql is lexed in full only when that finds nothing. It allocates only to
// URL-decode tag values that need it and to copy those of long texts.
func (a *Analyzer) Analyze(sql string) Result {
	var res Result
	// Fast path: a body the cache knows, found without lexing it.
	sc, quick := quickScan(sql)
	hit := false
	if quick {
		res.Queries, hit = a.lookup(sc.body, true)
	}
	if !hit {
		sc = scan(sql)
	}
	a.readTags(&res, &sc)
	if len(sql) > maxAliasedText {
		res.own()
	}
	if !hit {
		res.Queries = a.queries(&sc)
	}
	return res
}

// maxAliasedText is the longest statement text whose tag values Analyze
// returns as substrings of the text rather than as copies: short texts
// (the usual ORM statement with its comment) cost no allocation, and a
// kept tag holds at most this much memory.
const maxAliasedText = 1 << 10

// own makes the tag values and trace state of res copies that share no
// memory with the text they were read from.
func (res *Result) own() {
	t := &res.Tags
	for _, p := range []*string{&t.Application, &t.Route, &t.Controller, &t.Action, &t.Framework, &t.DBDriver, &t.Tenant} {
		*p = strings.Clone(*p)
	}
	if t.Extra != nil {
		extra := make(map[string]string, len(t.Extra))
		for k, v := range t.Extra {
			extra[strings.Clone(k)] = strings.Clone(v)
		}
		t.Extra = extra
	}
	res.Trace.TraceState = strings.Clone(res.Trace.TraceState)
}

// readTags fills the tags and trace context of res from the tag comment.
func (a *Analyzer) readTags(res *Result, sc *scanned) {
	var traceparent, tracestate string
	it, k, v, ok := sc.firstPair()
	for ; ok; k, v, ok = it.next() {
		// Known keys are plain ASCII: match the raw key first and decode
		// only keys that match none.
		switch k {
		case "traceparent":
			traceparent = v // decoded below, only if it does not parse raw
			continue
		case "tracestate":
			tracestate = v
			continue
		}
		// Known keys are plain ASCII too: try the raw key before decoding it.
		if a.setTag(res, k, v) {
			continue
		}
		dk := decodeTag(k)
		if dk == k && !a.cfg.KeepUnknownTags {
			continue // not a known key, and decoding cannot make it one
		}
		switch dk {
		case "traceparent":
			traceparent = v
			continue
		case "tracestate":
			tracestate = v
			continue
		}
		if !a.setTag(res, dk, v) && a.cfg.KeepUnknownTags {
			if res.Tags.Extra == nil {
				res.Tags.Extra = make(map[string]string)
			}
			res.Tags.Extra[dk] = decodeTag(v)
		}
	}
	if traceparent == "" {
		return
	}
	tc, err := ParseTraceparent(traceparent)
	if err != nil {
		if d := decodeTag(traceparent); d != traceparent {
			tc, err = ParseTraceparent(d)
		}
	}
	if err != nil {
		res.TraceInvalid = true
		a.invalidTraceparents.Add(1)
		return
	}
	if tracestate = decodeTag(tracestate); len(tracestate) <= maxTraceState {
		tc.TraceState = tracestate
	}
	res.Trace = tc
}

// setTag stores the (still encoded) value v of the known tag key k in res
// and reports whether k was one.
func (a *Analyzer) setTag(res *Result, k, v string) bool {
	var dst *string
	switch k {
	case "application":
		dst = &res.Tags.Application
	case "route":
		dst = &res.Tags.Route
	case "controller":
		dst = &res.Tags.Controller
	case "action":
		dst = &res.Tags.Action
	case "framework":
		dst = &res.Tags.Framework
	case "db_driver":
		dst = &res.Tags.DBDriver
	default:
		if a.cfg.NoTenant || k != a.cfg.TenantKey {
			return false
		}
		dst = &res.Tags.Tenant
	}
	*dst = decodeTag(v)
	return true
}

// queries returns the analysis of a comment-stripped body, from the cache
// when it is there.
func (a *Analyzer) queries(sc *scanned) []*Query {
	body := sc.body
	if body == "" {
		return nil
	}
	if qs, hit := a.lookup(body, false); hit {
		return qs
	}
	// A text the exact cache does not know may still have a known shape.
	// Such hits are not added to the exact cache: texts that differ only in
	// constants would flood it.
	sh1, sh2, shaped := uint64(0), uint64(0), len(body) <= a.cfg.MaxStatementLength
	if shaped {
		sh1, sh2, shaped = shapeHash(body, a.seed, a.seed2)
	}
	if shaped {
		if se, ok := a.shapes[sh1&a.mask].Get(sh1); ok && se.check == sh2 {
			a.hits.Add(1)
			return se.queries
		}
	}
	a.misses.Add(1)
	h := maphash.String(a.seed, body)
	shard := a.shards[h&a.mask]
	e := &entry{queries: a.analyzeBody(body), open: sc.open}
	if shaped {
		a.shapes[sh1&a.mask].Add(sh1, shapeEntry{check: sh2, queries: e.queries})
	}
	if len(body) <= maxKeptText {
		e.text = strings.Clone(body)
	} else {
		e.check = maphash.String(a.seed2, body)
	}
	for _, q := range e.queries {
		if q.Fallback {
			a.fallbacks.Add(1)
		}
	}
	shard.Add(h, e)
	return e.queries
}

// lookup returns the cached analysis of body and counts a hit, or reports
// a miss without counting it. quick is set for bodies from quickScan, which
// must not match entries whose body ends in an open token.
func (a *Analyzer) lookup(body string, quick bool) ([]*Query, bool) {
	h := maphash.String(a.seed, body)
	if e, ok := a.shards[h&a.mask].Get(h); ok && e.matches(a, body) && !(quick && e.open) {
		a.hits.Add(1)
		return e.queries, true
	}
	return nil, false
}

func (e *entry) matches(a *Analyzer, body string) bool {
	if len(body) <= maxKeptText {
		return e.text == body
	}
	return e.text == "" && e.check == maphash.String(a.seed2, body)
}

// shapeHash hashes body's tokens with every constant (string, number,
// dollar-quoted body) replaced by one marker and every run of whitespace or
// comments by another: texts with the same shape differ only in their
// constants, which no part of a Query depends on (the fingerprint ignores
// them, the normalized text replaces them, summaries name operations and
// tables). It reports false for a text with an unterminated token.
func shapeHash(body string, seed1, seed2 maphash.Seed) (h1, h2 uint64, ok bool) {
	var x, y maphash.Hash
	x.SetSeed(seed1)
	y.SetSeed(seed2)
	write := func(s string) {
		x.WriteString(s)
		y.WriteString(s)
	}
	l := lexer{s: body}
	gap := false
	for {
		t := l.next()
		if t.open {
			return 0, 0, false
		}
		switch {
		case t.kind == tkEOF:
			return x.Sum64(), y.Sum64(), true
		case t.kind == tkSpace || t.kind == tkLineComment || t.kind == tkBlockComment:
			if !gap {
				write("\x00 ")
				gap = true
			}
			continue
		case t.kind.isLiteral():
			write("\x00L")
		default:
			write("\x00")
			write(body[t.start:t.end])
		}
		gap = false
	}
}

// analyzeBody parses a body (the cache-miss path). A panic anywhere in it
// (a parser bug on hostile input) becomes a fallback result.
func (a *Analyzer) analyzeBody(body string) (qs []*Query) {
	defer func() {
		if r := recover(); r != nil {
			q := fallbackQuery(body, fmt.Sprintf("internal error: %v", r))
			qs = []*Query{q}
		}
	}()
	if len(body) > a.cfg.MaxStatementLength {
		return []*Query{truncatedQuery(body, a.cfg.MaxStatementLength)}
	}
	tree, err := pg.Parse(body)
	if err != nil {
		// Some statement does not parse: split with the lexer and give each
		// statement its own chance (one bad statement of a batch does not
		// spoil the others).
		parts := splitStatements(body)
		if len(parts) == 1 {
			return []*Query{fallbackQuery(parts[0], err.Error())}
		}
		for _, p := range parts {
			qs = append(qs, analyzeStatement(p, nil))
		}
		return qs
	}
	// The parser's own statement boundaries (pg_query's scanner-based
	// splitter drops short statements it does not recognize, and a lexer
	// would split CREATE FUNCTION … BEGIN ATOMIC bodies).
	stmts := tree.GetStmts()
	for _, raw := range stmts {
		p, ok := stmtText(body, raw)
		if !ok {
			return []*Query{fallbackQuery(body, "statement boundaries out of range")}
		}
		var stmt *pg.Node
		if len(stmts) == 1 {
			stmt = raw.GetStmt() // the tree of body is the tree of p
		}
		qs = append(qs, analyzeStatement(p, stmt))
	}
	return qs
}

// stmtText returns the text of raw within body, trimmed.
func stmtText(body string, raw *pg.RawStmt) (string, bool) {
	loc, n := int(raw.GetStmtLocation()), int(raw.GetStmtLen())
	if loc < 0 || loc > len(body) || n < 0 || loc+n > len(body) {
		return "", false
	}
	if n == 0 { // the last statement runs to the end
		n = len(body) - loc
	}
	return strings.TrimSpace(body[loc : loc+n]), true
}

// splitStatements splits text at the semicolons outside literals, quoted
// identifiers and comments, dropping statements without code. It always
// returns at least one text.
func splitStatements(text string) []string {
	var parts []string
	start, code := 0, false
	l := lexer{s: text}
	for t := l.next(); ; t = l.next() {
		switch t.kind {
		case tkSpace, tkLineComment, tkBlockComment:
			continue
		case tkSemicolon, tkEOF:
			if code {
				parts = append(parts, strings.TrimSpace(text[start:t.start]))
			}
			if t.kind == tkEOF {
				if len(parts) == 0 {
					parts = append(parts, strings.TrimSpace(text))
				}
				return parts
			}
			start, code = t.end, false
		default:
			code = true
		}
	}
}

// analyzeStatement analyzes one statement with pg_query. stmt is its parse
// tree when the caller has it, else nil.
func analyzeStatement(text string, stmt *pg.Node) *Query {
	if stmt == nil {
		tree, err := pg.Parse(text)
		if err != nil {
			return fallbackQuery(text, err.Error())
		}
		if stmts := tree.GetStmts(); len(stmts) > 0 {
			stmt = stmts[0].GetStmt()
		}
	}
	fp, err := pg.FingerprintToUInt64(text)
	if err != nil {
		return fallbackQuery(text, err.Error())
	}
	norm, err := pg.Normalize(text)
	if err != nil {
		return fallbackQuery(text, err.Error())
	}
	// pg_query keeps comments and layout, and it leaves the constants of
	// most utility statements alone (CALL p(42), DEFAULT 'x' in DDL). A
	// second pass drops comments, folds whitespace and replaces whatever
	// literal is left, numbering after pg_query's $n.
	norm, _ = lexNormalize(norm, true)
	q := &Query{Fingerprint: formatFingerprint(fp), Normalized: norm}
	if stmt != nil {
		q.Operation = statementOperation(stmt, text)
		q.Tables = statementTables(stmt)
		q.TxControl = treeTxControl(stmt)
		q.Session = sessionUses(stmt, text)
		if stmt.GetPrepareStmt() != nil {
			if body, ok := prepareBody(text); ok {
				q.Body = analyzeStatement(body, nil)
			}
		}
	} else {
		q.Operation = lexOperation(text)
		q.TxControl = lexTxControl(text)
	}
	q.finish()
	return q
}

// prepareBody returns the statement of PREPARE name [(types)] AS statement:
// the text after the AS at parenthesis depth 0.
func prepareBody(text string) (string, bool) {
	l := lexer{s: text}
	depth := 0
	for t := l.next(); t.kind != tkEOF; t = l.next() {
		switch {
		case t.kind == tkOther && text[t.start] == '(':
			depth++
		case t.kind == tkOther && text[t.start] == ')':
			depth--
		case t.kind == tkIdent && depth == 0 && strings.EqualFold(text[t.start:t.end], "as"):
			body := strings.TrimSpace(text[t.end:])
			return body, body != ""
		}
	}
	return "", false
}

// fallbackQuery analyzes a statement pg_query rejected with the lexer.
func fallbackQuery(text, parseErr string) *Query {
	norm, h := lexNormalize(text, true)
	q := &Query{
		Fingerprint: formatFingerprint(h),
		Normalized:  norm,
		Operation:   lexOperation(text),
		Tables:      lexTables(text),
		TxControl:   lexTxControl(text),
		ParseError:  parseErr,
		Fallback:    true,
	}
	q.finish()
	return q
}

// truncatedQuery describes a statement longer than max: hashed whole (by
// the lexer's literal-blind hash, so literal values still do not matter) and
// shown by its normalized first truncatedPrefix bytes. A literal cut by the
// prefix is unterminated there and so still replaced.
func truncatedQuery(text string, max int) *Query {
	_, h := lexNormalize(text, true)
	prefix := text
	if len(prefix) > truncatedPrefix {
		prefix = prefix[:truncatedPrefix]
	}
	norm, _ := lexNormalize(prefix, true)
	q := &Query{
		Fingerprint: formatFingerprint(h),
		Normalized:  norm + " …",
		Operation:   lexOperation(prefix),
		Tables:      lexTables(prefix),
		TxControl:   lexTxControl(prefix),
		ParseError:  fmt.Sprintf("statement of %d bytes is longer than the %d-byte limit: not parsed", len(text), max),
		Fallback:    true,
		Truncated:   true,
	}
	q.finish()
	return q
}

// finish derives Summary and Collection from Operation and Tables.
func (q *Query) finish() {
	q.Summary = summarize(q.Operation, q.Tables)
	if len(q.Tables) == 1 {
		q.Collection = q.Tables[0]
	}
}

func formatFingerprint(h uint64) string {
	s := strconv.FormatUint(h, 16)
	if len(s) < 16 {
		s = strings.Repeat("0", 16-len(s)) + s
	}
	return s
}

// Stats returns the Analyzer's counters.
func (a *Analyzer) Stats() Stats {
	size := 0
	for _, s := range a.shards {
		size += s.Len()
	}
	return Stats{
		Hits:                a.hits.Load(),
		Misses:              a.misses.Load(),
		Evictions:           a.evictions.Load(),
		Size:                size,
		InvalidTraceparents: a.invalidTraceparents.Load(),
		Fallbacks:           a.fallbacks.Load(),
	}
}
