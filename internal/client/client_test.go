package client

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs/errgrpc"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// fakeService answers Inspect with the error its id names, and streams
// events until told to stop.
type fakeService struct {
	sandboxv1.UnimplementedSandboxServiceServer
	streaming chan struct{} // receives when an Events stream starts
	// recovering is how many more Inspect calls of id "recovering" are
	// refused as a recovering daemon refuses them.
	recovering atomic.Int32
	// calls counts Inspect calls.
	calls atomic.Int32
}

func (s *fakeService) Inspect(ctx context.Context, req *sandboxv1.InspectRequest) (*sandboxv1.InspectResponse, error) {
	s.calls.Add(1)
	switch req.GetId() {
	case "recovering":
		if s.recovering.Add(-1) >= 0 {
			return nil, errgrpc.Recovering("vmm-daemon is recovering its sandboxes")
		}
	case "notfound":
		return nil, errgrpc.ToGRPC(fmt.Errorf("sandbox notfound: %w", errdefs.ErrNotFound))
	case "invalid":
		return nil, errgrpc.ToGRPC(fmt.Errorf("sandbox id \"invalid\" is malformed: %w", errdefs.ErrInvalidArgument))
	case "internal":
		return nil, status.Error(codes.Internal, "boom")
	case "unknown":
		return nil, status.Error(codes.Unknown, "something odd")
	case "shutdown":
		return nil, errgrpc.ToGRPC(fmt.Errorf("daemon is shutting down: %w", errdefs.ErrUnavailable))
	}
	return &sandboxv1.InspectResponse{Sandbox: &sandboxv1.Sandbox{Id: req.GetId(), State: sandboxv1.SandboxState_SANDBOX_STATE_READY}}, nil
}

func (s *fakeService) Events(req *sandboxv1.EventsRequest, stream grpc.ServerStreamingServer[sandboxv1.Event]) error {
	if err := stream.Send(&sandboxv1.Event{Seq: 1, SandboxId: "a", Action: "created"}); err != nil {
		return err
	}
	if req.GetId() == "end" {
		return nil
	}
	s.streaming <- struct{}{}
	<-stream.Context().Done()
	return nil
}

// serve runs srv on lis until the test ends (or stop is called).
func serve(t *testing.T, srv *grpc.Server, lis net.Listener) (stop func()) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = srv.Serve(lis)
	}()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			srv.Stop()
			<-done
		}
	}
	t.Cleanup(stop)
	return stop
}

func startUnix(t *testing.T) (sock string, svc *fakeService, stop func()) {
	t.Helper()
	sock = filepath.Join(testutil.ShortDir(t), "vmm.sock")
	lis, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	svc = &fakeService{streaming: make(chan struct{}, 1)}
	srv := grpc.NewServer(grpc.WaitForHandlers(true))
	sandboxv1.RegisterSandboxServiceServer(srv, svc)
	return sock, svc, serve(t, srv, lis)
}

func dial(t *testing.T, opts Options) *Client {
	t.Helper()
	c, err := New(t.Context(), opts)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestNoDaemon(t *testing.T) {
	dir := testutil.ShortDir(t)
	stale := filepath.Join(dir, "stale.sock")
	lis, err := net.Listen("unix", stale)
	if err != nil {
		t.Fatal(err)
	}
	lis.(*net.UnixListener).SetUnlinkOnClose(false)
	lis.Close()

	for _, sock := range []string{filepath.Join(dir, "missing.sock"), stale} {
		start := time.Now()
		_, err := New(t.Context(), Options{Socket: sock})
		want := "no daemon is listening on " + sock + " (is vmm-daemon running? set --socket or VMM_SOCKET)"
		if err == nil || err.Error() != want {
			t.Errorf("New(%s) = %v, want %q", sock, err, want)
		}
		if !errors.Is(err, errdefs.ErrUnavailable) {
			t.Errorf("error class: %v", err)
		}
		if d := time.Since(start); d > time.Second {
			t.Errorf("failing took %v; want fast", d)
		}
	}

	// A TCP port nobody listens on.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = New(t.Context(), Options{Addr: addr})
	if err == nil || !strings.HasPrefix(err.Error(), "no daemon is listening on "+addr) || !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("New(tcp %s) = %v", addr, err)
	}
}

// A call the daemon refuses while it recovers is repeated until it is
// answered; other UNAVAILABLE answers (a daemon shutting down) are not.
func TestWaitsForRecovery(t *testing.T) {
	sock, svc, _ := startUnix(t)
	c := dial(t, Options{Socket: sock})
	tests := []struct {
		name      string
		id        string
		refusals  int32
		wantCalls int32
		wantErr   bool
	}{
		{"answered after three refusals", "recovering", 3, 4, false},
		{"answered at once", "recovering", 0, 1, false},
		{"shutting down is not retried", "shutdown", 0, 1, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			svc.recovering.Store(tt.refusals)
			svc.calls.Store(0)
			_, err := c.Inspect(t.Context(), tt.id)
			if (err != nil) != tt.wantErr {
				t.Fatalf("Inspect = %v, want error %v", err, tt.wantErr)
			}
			if got := svc.calls.Load(); got != tt.wantCalls {
				t.Errorf("%d calls, want %d", got, tt.wantCalls)
			}
		})
	}
}

func TestErrorsMapped(t *testing.T) {
	sock, _, _ := startUnix(t)
	c := dial(t, Options{Socket: sock})

	sb, err := c.Inspect(t.Context(), "01jd2z9k0001")
	if err != nil || sb.GetId() != "01jd2z9k0001" {
		t.Fatalf("Inspect = %v, %v", sb, err)
	}
	tests := []struct {
		id    string
		class error
		msg   string
	}{
		{"notfound", errdefs.ErrNotFound, "sandbox notfound: not found"},
		{"invalid", errdefs.ErrInvalidArgument, `sandbox id "invalid" is malformed: invalid argument`},
		{"shutdown", errdefs.ErrUnavailable, "daemon is shutting down: unavailable"},
		{"internal", nil, "internal error in the daemon: boom"},
		{"unknown", nil, "something odd"},
	}
	for _, tt := range tests {
		_, err := c.Inspect(t.Context(), tt.id)
		if err == nil || err.Error() != tt.msg {
			t.Errorf("%s: err = %v, want %q", tt.id, err, tt.msg)
			continue
		}
		if tt.class != nil && !errors.Is(err, tt.class) {
			t.Errorf("%s: %v is not of class %v", tt.id, err, tt.class)
		}
		if s, ok := status.FromError(err); !ok || s.Code() == codes.OK {
			t.Errorf("%s: status lost: %v", tt.id, s)
		}
	}

	// The snapshot service is not registered on this server.
	_, err = c.ListSnapshots(t.Context(), "")
	want := "the daemon on " + sock + " does not offer sandbox.v1.SandboxSnapshotService (is it older than this vmm?)"
	if err == nil || err.Error() != want || !errors.Is(err, errdefs.ErrNotImplemented) {
		t.Errorf("ListSnapshots = %v, want %q", err, want)
	}
	// Declared but unimplemented methods keep the server's message.
	err = c.Remove(t.Context(), "x", false)
	if !errors.Is(err, errdefs.ErrNotImplemented) || strings.Contains(err.Error(), "rpc error") {
		t.Errorf("Remove = %v", err)
	}
}

func TestEventsStream(t *testing.T) {
	sock, svc, stop := startUnix(t)
	c := dial(t, Options{Socket: sock})

	// The daemon ends the stream: io.EOF after the events.
	s, err := c.Events(t.Context(), &sandboxv1.EventsRequest{Id: "end"})
	if err != nil {
		t.Fatal(err)
	}
	if ev, err := s.Recv(); err != nil || ev.GetSeq() != 1 {
		t.Fatalf("Recv = %v, %v", ev, err)
	}
	if _, err := s.Recv(); err != io.EOF {
		t.Fatalf("Recv at end = %v, want io.EOF", err)
	}

	// The caller cancels: a Canceled-class error.
	ctx, cancel := context.WithCancel(t.Context())
	s, err = c.Events(ctx, &sandboxv1.EventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	<-svc.streaming
	cancel()
	if _, err := s.Recv(); !errors.Is(err, errdefs.ErrCanceled) {
		t.Fatalf("Recv after cancel = %v", err)
	}

	// The daemon goes away mid-stream: a sentence, not transport noise.
	s, err = c.Events(t.Context(), &sandboxv1.EventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.Recv(); err != nil {
		t.Fatal(err)
	}
	<-svc.streaming
	stop()
	_, err = s.Recv()
	if err == nil || err == io.EOF {
		t.Fatalf("Recv after daemon stop = %v", err)
	}
	if strings.Contains(err.Error(), "rpc error") || strings.Contains(err.Error(), "desc =") {
		t.Errorf("Recv after daemon stop leaks jargon: %v", err)
	}
	t.Logf("daemon gone mid-stream: %v", err)
	// And calls after that name the socket.
	_, err = c.Inspect(t.Context(), "x")
	if err == nil || !strings.Contains(err.Error(), sock) || !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("Inspect after daemon stop = %v", err)
	}
}

// pki is a throw-away CA with a server and a client certificate.
type pki struct {
	dir                    string
	caPEM                  string
	serverCert, serverKey  string
	clientCert, clientKey  string
	otherCA                string
	serverPair, clientPair tls.Certificate
	caPool                 *x509.CertPool
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	p := &pki{dir: t.TempDir()}
	caKey, caCert, caDER := makeCA(t, "test CA")
	p.caPEM = p.write(t, "ca.pem", "CERTIFICATE", caDER)
	_, _, otherDER := makeCA(t, "other CA")
	p.otherCA = p.write(t, "other-ca.pem", "CERTIFICATE", otherDER)
	p.caPool = x509.NewCertPool()
	p.caPool.AddCert(caCert)
	p.serverCert, p.serverKey, p.serverPair = p.leaf(t, "server", caKey, caCert, x509.ExtKeyUsageServerAuth)
	p.clientCert, p.clientKey, p.clientPair = p.leaf(t, "client", caKey, caCert, x509.ExtKeyUsageClientAuth)
	return p
}

func makeCA(t *testing.T, name string) (*ecdsa.PrivateKey, *x509.Certificate, []byte) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	return key, cert, der
}

func (p *pki) leaf(t *testing.T, name string, caKey *ecdsa.PrivateKey, ca *x509.Certificate, usage x509.ExtKeyUsage) (certPath, keyPath string, pair tls.Certificate) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPath = p.write(t, name+".pem", "CERTIFICATE", der)
	keyPath = p.write(t, name+"-key.pem", "EC PRIVATE KEY", keyDER)
	pair, err = tls.LoadX509KeyPair(certPath, keyPath)
	if err != nil {
		t.Fatal(err)
	}
	return certPath, keyPath, pair
}

func (p *pki) write(t *testing.T, name, typ string, der []byte) string {
	t.Helper()
	path := filepath.Join(p.dir, name)
	if err := os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}

func TestTCPWithTLS(t *testing.T) {
	p := newPKI(t)
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	srv := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{
		Certificates: []tls.Certificate{p.serverPair},
		ClientCAs:    p.caPool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	})))
	sandboxv1.RegisterSandboxServiceServer(srv, &fakeService{streaming: make(chan struct{}, 1)})
	serve(t, srv, lis)

	c := dial(t, Options{Addr: addr, TLS: TLSFiles{Cert: p.clientCert, Key: p.clientKey, CA: p.caPEM}})
	if sb, err := c.Inspect(t.Context(), "abc"); err != nil || sb.GetId() != "abc" {
		t.Fatalf("Inspect over mutual TLS = %v, %v", sb, err)
	}
	if c.target != addr {
		t.Errorf("target = %q", c.target)
	}

	// The daemon's certificate does not verify against another CA.
	_, err = New(t.Context(), Options{Addr: addr, TLS: TLSFiles{Cert: p.clientCert, Key: p.clientKey, CA: p.otherCA}})
	if err == nil || !strings.HasPrefix(err.Error(), "TLS handshake with the daemon on "+addr+" failed") || !errors.Is(err, errdefs.ErrUnavailable) {
		t.Errorf("wrong CA: %v", err)
	}

	// No client certificate: the daemon refuses it, and the error says TLS.
	c2, err := New(t.Context(), Options{Addr: addr, TLS: TLSFiles{CA: p.caPEM}})
	if err == nil {
		defer c2.Close()
		_, err = c2.Inspect(t.Context(), "abc")
	}
	if err == nil || !strings.Contains(err.Error(), "TLS") || !strings.Contains(err.Error(), "certificate") ||
		!strings.Contains(err.Error(), addr) || strings.Contains(err.Error(), "rpc error") {
		t.Errorf("no client certificate: %v", err)
	}
	t.Logf("no client certificate: %v", err)

	// Plaintext against a TLS daemon fails, cleanly.
	c3, err := New(t.Context(), Options{Addr: addr})
	if err != nil {
		t.Fatal(err)
	}
	defer c3.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	if _, err := c3.Inspect(ctx, "abc"); err == nil || strings.Contains(err.Error(), "rpc error") {
		t.Errorf("plaintext against TLS = %v", err)
	}
}

func TestTLSOptionErrors(t *testing.T) {
	p := newPKI(t)
	for _, tc := range []struct {
		files TLSFiles
		want  string
	}{
		{TLSFiles{Cert: p.clientCert}, "needs both --tls-cert and --tls-key"},
		{TLSFiles{CA: filepath.Join(p.dir, "nope.pem")}, "reading TLS CA bundle"},
		{TLSFiles{CA: p.clientKey}, "holds no PEM certificate"},
		{TLSFiles{Cert: p.clientCert, Key: p.serverKey}, "loading TLS client certificate"},
	} {
		_, err := New(t.Context(), Options{Addr: "127.0.0.1:1", TLS: tc.files})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: %v, want %q", tc.files, err, tc.want)
		}
	}
	if _, err := New(t.Context(), Options{Addr: "no-port"}); !errors.Is(err, errdefs.ErrInvalidArgument) {
		t.Errorf("bad address: %v", err)
	}
}

func TestPlainTCP(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	sandboxv1.RegisterSandboxServiceServer(srv, &fakeService{streaming: make(chan struct{}, 1)})
	serve(t, srv, lis)
	c := dial(t, Options{Addr: lis.Addr().String()})
	if _, err := c.Inspect(t.Context(), "abc"); err != nil {
		t.Fatal(err)
	}
}
