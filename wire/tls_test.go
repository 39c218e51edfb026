package wire

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/pem"
	"errors"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/dotmac/pgtrace/internal/pgtest"
	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
)

// testPKI is a throwaway CA and a server certificate for 127.0.0.1 and
// localhost, made for one test.
type testPKI struct {
	pool   *x509.CertPool
	caPEM  []byte
	server tls.Certificate
}

func newTestPKI(t *testing.T) *testPKI {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber:          big.NewInt(1),
		Subject:               pkix.Name{CommonName: "pgtrace test CA"},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(time.Hour),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign,
		BasicConstraintsValid: true,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2),
		Subject:      pkix.Name{CommonName: "localhost"},
		DNSNames:     []string{"localhost"},
		IPAddresses:  []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(time.Hour),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &testPKI{
		pool:   pool,
		caPEM:  pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}),
		server: tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key},
	}
}

func TestClientTLS(t *testing.T) {
	pki := newTestPKI(t)
	p := startProxy(t, pgtest.Start(t), func(s *Server) {
		s.ClientTLS = &tls.Config{Certificates: []tls.Certificate{pki.server}}
	})
	ca := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(ca, pki.caPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	dsn := strings.Replace(p.dsn(p.pg.User, p.pg.Password), "sslmode=disable", "sslmode=verify-full&sslrootcert="+ca, 1)
	c := p.connectDSN(t, dsn)
	if !c.PgConn().Conn().(interface{ ConnectionState() tls.ConnectionState }).ConnectionState().HandshakeComplete {
		t.Fatal("client connection is not TLS")
	}
	var n int
	if err := c.QueryRow(ctxT(t), "select 40 + $1::int", 2).Scan(&n); err != nil || n != 42 {
		t.Fatal(n, err)
	}
	got := p.rec.waitStmts(t, c.PgConn().PID(), 1)
	if got[0].Text != "select 40 + $1::int" {
		t.Errorf("statement: %+v", got[0])
	}
	// A plain client still works.
	p.connect(t)
}

// tlsFront is a fake upstream that answers SSLRequest ('S' with TLS, or
// 'N') and forwards the session to a real PostgreSQL.
type tlsFront struct {
	addr    string
	tlsUsed atomic.Int32
}

func newTLSFront(t *testing.T, target string, cfg *tls.Config) *tlsFront {
	l := mustListen(t)
	t.Cleanup(func() { l.Close() })
	f := &tlsFront{addr: l.Addr().String()}
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go f.serve(c, target, cfg)
		}
	}()
	return f
}

func (f *tlsFront) serve(c net.Conn, target string, cfg *tls.Config) {
	defer c.Close()
	var hdr [8]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return
	}
	var first []byte
	if binary.BigEndian.Uint32(hdr[4:]) == codeSSLRequest {
		if cfg == nil {
			c.Write([]byte{'N'})
		} else {
			c.Write([]byte{'S'})
			tc := tls.Server(c, cfg)
			if err := tc.Handshake(); err != nil {
				return
			}
			f.tlsUsed.Add(1)
			c = tc
		}
	} else {
		first = hdr[:]
	}
	u, err := net.Dial("tcp", target)
	if err != nil {
		return
	}
	defer u.Close()
	u.Write(first)
	go io.Copy(u, c)
	io.Copy(c, u)
}

func TestUpstreamTLS(t *testing.T) {
	pg := pgtest.Start(t)
	pki := newTestPKI(t)
	withTLS := newTLSFront(t, pg.Addr(), &tls.Config{Certificates: []tls.Certificate{pki.server}})
	withoutTLS := newTLSFront(t, pg.Addr(), nil)
	otherPKI := newTestPKI(t)

	for _, tc := range []struct {
		name    string
		front   *tlsFront
		cfg     UpstreamTLS
		wantTLS bool
		wantErr string // in the 08001 message; "" for success
	}{
		{"disable", withTLS, UpstreamTLS{}, false, ""},
		{"prefer with TLS", withTLS, UpstreamTLS{Mode: "prefer"}, true, ""},
		{"prefer without TLS", withoutTLS, UpstreamTLS{Mode: "prefer"}, false, ""},
		{"require", withTLS, UpstreamTLS{Mode: "require"}, true, ""},
		{"require without TLS", withoutTLS, UpstreamTLS{Mode: "require"}, false, "does not support TLS"},
		{"verify-full", withTLS, UpstreamTLS{Mode: "verify-full", RootCAs: pki.pool}, true, ""},
		{"verify-full wrong CA", withTLS, UpstreamTLS{Mode: "verify-full", RootCAs: otherPKI.pool}, false, "certificate"},
		{"verify-full wrong name", withTLS, UpstreamTLS{Mode: "verify-full", RootCAs: pki.pool, ServerName: "db.example"}, false, "certificate"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			before := tc.front.tlsUsed.Load()
			p := startProxy(t, pg, func(s *Server) {
				s.Upstream = tc.front.addr
				s.UpstreamTLS = tc.cfg
			})
			c, err := pgx.Connect(ctxT(t), p.dsn(pg.User, pg.Password))
			if tc.wantErr != "" {
				var pgErr *pgconn.PgError
				if !errors.As(err, &pgErr) || pgErr.Code != "08001" || !strings.Contains(pgErr.Message, tc.wantErr) {
					t.Fatalf("connect: %v, want 08001 with %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("connect: %v", err)
			}
			defer c.Close(ctxT(t))
			if _, err := c.Exec(ctxT(t), "select 1"); err != nil {
				t.Fatal(err)
			}
			if used := tc.front.tlsUsed.Load() > before; used != tc.wantTLS {
				t.Errorf("TLS used: %v, want %v", used, tc.wantTLS)
			}
		})
	}
}
