package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"net/http"
	"strconv"

	"github.com/dotmac/pgtrace/observe"
)

// server holds what the handlers share.
type server struct {
	db       *sql.DB
	log      *slog.Logger
	business *observe.BusinessMetrics
}

func newServer(db *sql.DB, log *slog.Logger, business *observe.BusinessMetrics) *server {
	return &server{db: db, log: log, business: business}
}

// handler is the service's whole HTTP surface, wrapped by observe: every
// request needs a valid tenant header.
func (s *server) handler(opts ...observe.Option) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /partners/report", s.report)
	mux.HandleFunc("GET /partners/report-n-plus-one", s.reportNPlusOne)
	mux.HandleFunc("GET /partners/{id}", s.partner)
	mux.HandleFunc("POST /partners/{id}/commissions", s.createCommission)
	mux.Handle("GET "+observe.DebugPath, observe.DebugHandler(append([]observe.Option{observe.WithDefaultServiceName(defaultServiceName)}, opts...)...))
	opts = append([]observe.Option{observe.WithTenantValidator(validateTenant)}, opts...)
	return observe.NewHandler(mux, opts...)
}

func validateTenant(_ context.Context, tenant string) error {
	if !tenantPattern.MatchString(tenant) {
		return errors.New("want 1 to 64 letters, digits, '.', '_' or '-'")
	}
	return nil
}

// PartnerSummary is a row of both reports.
type PartnerSummary struct {
	ID              int64  `json:"id"`
	Name            string `json:"name"`
	Customers       int64  `json:"customers"`
	CommissionTotal string `json:"commission_total"`
}

const reportQuery = `
SELECT p.id, p.name, coalesce(c.n, 0), coalesce(m.total, 0)::numeric(14,2)::text
FROM partners p
LEFT JOIN (SELECT partner_id, count(*) AS n FROM customers GROUP BY partner_id) c ON c.partner_id = p.id
LEFT JOIN (SELECT partner_id, sum(amount) AS total FROM commissions GROUP BY partner_id) m ON m.partner_id = p.id
ORDER BY p.id`

// report answers with every partner's customer count and commission total,
// in one query.
func (s *server) report(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	rows, err := s.db.QueryContext(ctx, reportQuery)
	if err != nil {
		s.fail(w, r, "report query", err)
		return
	}
	defer rows.Close()
	out := []PartnerSummary{}
	for rows.Next() {
		var p PartnerSummary
		if err := rows.Scan(&p.ID, &p.Name, &p.Customers, &p.CommissionTotal); err != nil {
			s.fail(w, r, "report scan", err)
			return
		}
		out = append(out, p)
	}
	if err := rows.Err(); err != nil {
		s.fail(w, r, "report rows", err)
		return
	}
	writeJSON(w, http.StatusOK, out)
}

// reportNPlusOne gives report's answer the slow way: a query for the
// partners, then one query per partner — the N+1 pattern pgtrace flags.
func (s *server) reportNPlusOne(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	out := []PartnerSummary{}
	rows, err := s.db.QueryContext(ctx, `SELECT id, name FROM partners ORDER BY id`)
	if err != nil {
		s.fail(w, r, "partners query", err)
		return
	}
	for rows.Next() {
		var p PartnerSummary
		if err := rows.Scan(&p.ID, &p.Name); err != nil {
			rows.Close()
			s.fail(w, r, "partners scan", err)
			return
		}
		out = append(out, p)
	}
	if err := errors.Join(rows.Err(), rows.Close()); err != nil {
		s.fail(w, r, "partners rows", err)
		return
	}
	for i := range out {
		p := &out[i]
		err := s.db.QueryRowContext(ctx, `
SELECT (SELECT count(*) FROM customers WHERE partner_id = $1),
       (SELECT coalesce(sum(amount), 0)::numeric(14,2)::text FROM commissions WHERE partner_id = $1)`,
			p.ID).Scan(&p.Customers, &p.CommissionTotal)
		if err != nil {
			s.fail(w, r, "partner totals", err)
			return
		}
	}
	writeJSON(w, http.StatusOK, out)
}

// Customer is a customer of a partner.
type Customer struct {
	ID   int64  `json:"id"`
	Name string `json:"name"`
	Plan string `json:"plan"`
	MRR  string `json:"mrr"`
}

// Partner is the answer of GET /partners/{id}.
type Partner struct {
	ID              int64      `json:"id"`
	Name            string     `json:"name"`
	Tier            string     `json:"tier"`
	Territory       string     `json:"territory"`
	CommissionTotal string     `json:"commission_total"`
	Customers       []Customer `json:"customers"`
}

func (s *server) partner(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	p := Partner{ID: id, Customers: []Customer{}}
	err := s.db.QueryRowContext(ctx, `
SELECT name, tier, territory,
       (SELECT coalesce(sum(amount), 0)::numeric(14,2)::text FROM commissions WHERE partner_id = p.id)
FROM partners p WHERE id = $1`, id).Scan(&p.Name, &p.Tier, &p.Territory, &p.CommissionTotal)
	if errors.Is(err, sql.ErrNoRows) {
		writeError(w, http.StatusNotFound, "partner not found")
		return
	}
	if err != nil {
		s.fail(w, r, "partner query", err)
		return
	}
	rows, err := s.db.QueryContext(ctx,
		`SELECT id, name, plan, mrr::text FROM customers WHERE partner_id = $1 ORDER BY id`, id)
	if err != nil {
		s.fail(w, r, "customers query", err)
		return
	}
	defer rows.Close()
	for rows.Next() {
		var c Customer
		if err := rows.Scan(&c.ID, &c.Name, &c.Plan, &c.MRR); err != nil {
			s.fail(w, r, "customers scan", err)
			return
		}
		p.Customers = append(p.Customers, c)
	}
	if err := rows.Err(); err != nil {
		s.fail(w, r, "customers rows", err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

// CommissionRequest is the body of POST /partners/{id}/commissions.
type CommissionRequest struct {
	CustomerID *int64  `json:"customer_id,omitempty"`
	Base       float64 `json:"base"`
	Rate       float64 `json:"rate"`
}

// CommissionResponse is its answer.
type CommissionResponse struct {
	ID         int64  `json:"id"`
	PartnerID  int64  `json:"partner_id"`
	CustomerID *int64 `json:"customer_id,omitempty"`
	Base       string `json:"base"`
	Rate       string `json:"rate"`
	Amount     string `json:"amount"`
}

var errNotFound = errors.New("not found")

func (s *server) createCommission(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	id, ok := pathID(w, r)
	if !ok {
		return
	}
	var req CommissionRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<16))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		writeError(w, http.StatusBadRequest, "invalid body: "+err.Error())
		return
	}
	if !(req.Base > 0 && req.Base < 1e9) || !(req.Rate >= 0 && req.Rate <= 1) {
		writeError(w, http.StatusBadRequest, "base must be positive and rate between 0 and 1")
		return
	}
	amount := math.Round(req.Base*req.Rate*100) / 100
	resp := CommissionResponse{PartnerID: id, CustomerID: req.CustomerID}
	err := observe.TracedTx(ctx, s.db, "record commission", func(ctx context.Context, tx *sql.Tx) error {
		var exists bool
		if err := tx.QueryRowContext(ctx, `SELECT EXISTS (SELECT 1 FROM partners WHERE id = $1)`, id).Scan(&exists); err != nil {
			return fmt.Errorf("check partner: %w", err)
		}
		if !exists {
			return fmt.Errorf("partner %d: %w", id, errNotFound)
		}
		if req.CustomerID != nil {
			if err := tx.QueryRowContext(ctx,
				`SELECT EXISTS (SELECT 1 FROM customers WHERE id = $1 AND partner_id = $2)`,
				*req.CustomerID, id).Scan(&exists); err != nil {
				return fmt.Errorf("check customer: %w", err)
			}
			if !exists {
				return fmt.Errorf("customer %d of partner %d: %w", *req.CustomerID, id, errNotFound)
			}
		}
		return tx.QueryRowContext(ctx, `
INSERT INTO commissions (partner_id, customer_id, base, rate, amount)
VALUES ($1, $2, $3, $4, $5)
RETURNING id, base::text, rate::text, amount::text`,
			id, req.CustomerID, req.Base, req.Rate, amount).Scan(&resp.ID, &resp.Base, &resp.Rate, &resp.Amount)
	})
	if errors.Is(err, errNotFound) {
		writeError(w, http.StatusNotFound, err.Error())
		return
	}
	if err != nil {
		s.fail(w, r, "record commission", err)
		return
	}
	var customer string
	if req.CustomerID != nil {
		customer = strconv.FormatInt(*req.CustomerID, 10)
	}
	s.business.RecordCommission(ctx, observe.Commission{
		PartnerID:  strconv.FormatInt(id, 10),
		CustomerID: customer,
		Base:       req.Base,
		Rate:       req.Rate,
		Amount:     amount,
	})
	s.log.InfoContext(ctx, "commission recorded", "partner_id", id, "amount", resp.Amount)
	writeJSON(w, http.StatusCreated, resp)
}

func pathID(w http.ResponseWriter, r *http.Request) (int64, bool) {
	id, err := strconv.ParseInt(r.PathValue("id"), 10, 64)
	if err != nil || id <= 0 {
		writeError(w, http.StatusBadRequest, "invalid partner id")
		return 0, false
	}
	return id, true
}

// fail logs err — which marks the request's span failed — and answers 500
// without the error's details.
func (s *server) fail(w http.ResponseWriter, r *http.Request, what string, err error) {
	s.log.ErrorContext(r.Context(), what+" failed", "error", err)
	writeError(w, http.StatusInternalServerError, "internal error")
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, code int, msg string) {
	writeJSON(w, code, map[string]string{"error": msg})
}
