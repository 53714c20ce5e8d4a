package daemon

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
	"math/big"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/sandbox"
	"github.com/firecracker-vmm/firecracker-vmm/internal/snapshot"
	"github.com/firecracker-vmm/firecracker-vmm/internal/testutil"
)

// fakeManager stands in for the sandbox manager.
type fakeManager struct {
	cfg sandbox.Config

	mu       sync.Mutex
	shutdown bool
	// blockStop makes Stop wait for its context.
	blockStop  bool
	stopCalled chan struct{}
}

func (f *fakeManager) Checkpoint(context.Context, sandbox.CheckpointRequest) (snapshot.Meta, error) {
	return snapshot.Meta{}, errdefs.ErrNotImplemented
}

func (f *fakeManager) Restore(context.Context, sandbox.RestoreRequest) (sandbox.Sandbox, error) {
	return sandbox.Sandbox{}, errdefs.ErrNotImplemented
}

func (f *fakeManager) ListSnapshots(context.Context, string) ([]snapshot.Meta, error) {
	return nil, nil
}

func (f *fakeManager) DeleteSnapshot(context.Context, string) error { return errdefs.ErrNotImplemented }

func (f *fakeManager) Create(context.Context, sandbox.CreateRequest) (sandbox.Sandbox, error) {
	return sandbox.Sandbox{ID: "01h2k3m4n5p6", State: sandbox.StateStarting}, nil
}

func (f *fakeManager) Get(_ context.Context, id string) (sandbox.Sandbox, error) {
	return sandbox.Sandbox{}, fmt.Errorf("sandbox %s: %w", id, errdefs.ErrNotFound)
}

func (f *fakeManager) List(context.Context, sandbox.ListFilter) ([]sandbox.Sandbox, error) {
	return nil, nil
}

func (f *fakeManager) Stop(ctx context.Context, id string, _ time.Duration) (sandbox.Sandbox, error) {
	f.mu.Lock()
	block := f.blockStop
	f.mu.Unlock()
	if block {
		close(f.stopCalled)
		<-ctx.Done()
		return sandbox.Sandbox{}, ctx.Err()
	}
	return sandbox.Sandbox{ID: id, State: sandbox.StateStopped}, nil
}

func (f *fakeManager) Remove(context.Context, string, bool) error { return nil }

func (f *fakeManager) Recover(context.Context) error { return nil }

func (f *fakeManager) Shutdown(context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.shutdown = true
	return nil
}

func (f *fakeManager) wasShutdown() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.shutdown
}

// fakeFirecracker writes a script that answers --version like Firecracker.
func fakeFirecracker(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "firecracker")
	if err := os.WriteFile(p, []byte("#!/bin/sh\necho 'Firecracker v1.16.1'\necho\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// testConfig returns a valid config with everything under temp dirs.
func testConfig(t *testing.T, binary string) Config {
	t.Helper()
	dir := testutil.ShortDir(t)
	cfg := DefaultConfig()
	cfg.Path = filepath.Join(dir, "config.toml")
	cfg.Firecracker.Binary = binary
	cfg.Firecracker.DataDir = filepath.Join(dir, "data")
	cfg.GRPC.UnixSocket = filepath.Join(dir, "run", "vmm.sock")
	cfg.Daemon.ShutdownTimeoutSecs = 5
	cfg.Daemon.OnShutdown = "stop"
	// Never build the bridge in the machine's own namespace from a test;
	// networking has its own tests in throwaway namespaces.
	cfg.Network.Enabled = false
	cfg.derive()
	return cfg
}

// running is a daemon started by startDaemon.
type running struct {
	d    *Daemon
	mgr  *fakeManager
	logs *testutil.SyncBuffer
	stop context.CancelFunc
	done chan error
}

// startDaemon runs a daemon with a fake manager until the test ends.
func startDaemon(t *testing.T, cfg Config) *running {
	t.Helper()
	log, logs := testLogger()
	r := &running{d: New(cfg, log), mgr: &fakeManager{stopCalled: make(chan struct{})}, logs: logs, done: make(chan error, 1)}
	r.d.newManager = func(c sandbox.Config) (manager, error) {
		r.mgr.cfg = c
		return r.mgr, nil
	}
	ctx, cancel := context.WithCancel(context.Background())
	r.stop = cancel
	go func() { r.done <- r.d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		<-r.done
	})
	select {
	case <-r.d.Ready():
	case err := <-r.done:
		r.done <- err
		t.Fatalf("daemon did not start: %v\n%s", err, logs)
	case <-time.After(10 * time.Second):
		t.Fatalf("daemon not ready after 10s\n%s", logs)
	}
	return r
}

// wait stops the daemon and returns Run's result.
func (r *running) wait(t *testing.T) error {
	t.Helper()
	r.stop()
	select {
	case err := <-r.done:
		r.done <- err
		return err
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return 20s after cancel")
		return nil
	}
}

func dialUnix(t *testing.T, path string) *grpc.ClientConn {
	t.Helper()
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func healthCheck(ctx context.Context, conn *grpc.ClientConn) error {
	resp, err := healthpb.NewHealthClient(conn).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		return err
	}
	if resp.GetStatus() != healthpb.HealthCheckResponse_SERVING {
		return fmt.Errorf("health %v", resp.GetStatus())
	}
	return nil
}

func TestRunServesAndShutsDownCleanly(t *testing.T) {
	cfg := testConfig(t, fakeFirecracker(t))
	cfg.Limits.AllowedDirs = []string{"/opt/images"}
	cfg.Path, cfg.FileMissing = DefaultConfigPath, true
	r := startDaemon(t, cfg)
	sock := cfg.GRPC.UnixSocket

	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o660 {
		t.Fatalf("socket: %v, %v", fi, err)
	}
	for sub, mode := range map[string]os.FileMode{"": 0o755, "kernels": 0o755, "images": 0o755, "sandboxes": 0o700, "snapshots": 0o700} {
		fi, err := os.Stat(filepath.Join(cfg.Firecracker.DataDir, sub))
		if err != nil || !fi.IsDir() || fi.Mode().Perm() != mode {
			t.Errorf("data dir %q: %v %v, want dir %v", sub, fi.Mode(), err, mode)
		}
	}
	mc := r.mgr.cfg
	if mc.DataDir != cfg.Firecracker.DataDir || mc.DefaultKernel != cfg.Defaults.Kernel || mc.StopTimeout != 10*time.Second ||
		mc.MaxSandboxes != 1000 || mc.Events == nil || mc.Launcher == nil || len(mc.AllowedDirs) != 3 || mc.AllowedDirs[2] != "/opt/images" {
		t.Errorf("manager config %+v", mc)
	}
	logs := r.logs.String()
	for _, want := range []string{"config file not found", "Firecracker v1.16.1", cfg.Firecracker.Binary, "vmm-daemon ready", "allowed directory is not accessible"} {
		if !strings.Contains(logs, want) {
			t.Errorf("log lacks %q:\n%s", want, logs)
		}
	}

	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	conn := dialUnix(t, sock)
	if err := healthCheck(ctx, conn); err != nil {
		t.Fatal(err)
	}
	client := sandboxv1.NewSandboxServiceClient(conn)
	if _, err := client.Inspect(ctx, &sandboxv1.InspectRequest{Id: "01h2k3m4n5p6"}); status.Code(err) != codes.NotFound {
		t.Errorf("Inspect: %v", err)
	}
	stream, err := client.Events(ctx, &sandboxv1.EventsRequest{})
	if err != nil {
		t.Fatal(err)
	}
	// Make sure the stream is established before shutting down.
	if _, err := client.Create(ctx, &sandboxv1.CreateRequest{}); err != nil {
		t.Fatal(err)
	}

	if err := r.wait(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if _, err := stream.Recv(); status.Code(err) != codes.Unavailable {
		t.Errorf("event stream after shutdown: %v, want Unavailable", err)
	}
	if !r.mgr.wasShutdown() {
		t.Error("manager not shut down")
	}
	if _, err := os.Lstat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

func TestRunRefusesSecondDaemon(t *testing.T) {
	cfg := testConfig(t, fakeFirecracker(t))
	startDaemon(t, cfg)
	log, _ := testLogger()
	second := New(cfg, log)
	second.newManager = func(sandbox.Config) (manager, error) { return &fakeManager{}, nil }
	err := second.Run(t.Context())
	if err == nil || !strings.Contains(err.Error(), "another daemon is listening on "+cfg.GRPC.UnixSocket) {
		t.Fatalf("second daemon: %v", err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 10*time.Second)
	defer cancel()
	if err := healthCheck(ctx, dialUnix(t, cfg.GRPC.UnixSocket)); err != nil {
		t.Errorf("first daemon harmed: %v", err)
	}
}

func TestRunMissingFirecracker(t *testing.T) {
	cfg := testConfig(t, "/nonexistent/bin/firecracker")
	log, _ := testLogger()
	err := New(cfg, log).Run(t.Context())
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/bin/firecracker") || !strings.Contains(err.Error(), "[firecracker].binary") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Stat(cfg.Firecracker.DataDir); !os.IsNotExist(err) {
		t.Errorf("data dir created before the failure: %v", err)
	}
	if _, err := os.Lstat(cfg.GRPC.UnixSocket); !os.IsNotExist(err) {
		t.Errorf("socket created: %v", err)
	}
}

func TestRunManagerFailureReleasesSocket(t *testing.T) {
	cfg := testConfig(t, fakeFirecracker(t))
	log, _ := testLogger()
	d := New(cfg, log)
	d.newManager = func(sandbox.Config) (manager, error) { return nil, errors.New("no way") }
	if err := d.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "no way") {
		t.Fatalf("err = %v", err)
	}
	if _, err := os.Lstat(cfg.GRPC.UnixSocket); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

func TestRunCutsInFlightCallsAfterShutdownTimeout(t *testing.T) {
	cfg := testConfig(t, fakeFirecracker(t))
	cfg.Daemon.ShutdownTimeoutSecs = 1
	r := startDaemon(t, cfg)
	r.mgr.mu.Lock()
	r.mgr.blockStop = true
	r.mgr.mu.Unlock()
	conn := dialUnix(t, cfg.GRPC.UnixSocket)
	errc := make(chan error, 1)
	go func() {
		_, err := sandboxv1.NewSandboxServiceClient(conn).Stop(context.Background(), &sandboxv1.StopRequest{Id: "01h2k3m4n5p6"})
		errc <- err
	}()
	<-r.mgr.stopCalled
	start := time.Now()
	if err := r.wait(t); err != nil {
		t.Fatalf("Run: %v", err)
	}
	if d := time.Since(start); d < 900*time.Millisecond || d > 10*time.Second {
		t.Errorf("shutdown took %v, want about the 1s shutdown timeout", d)
	}
	if err := <-errc; status.Code(err) != codes.Unavailable && status.Code(err) != codes.Canceled {
		t.Errorf("in-flight Stop ended with %v", err)
	}
	if !strings.Contains(r.logs.String(), "did not finish within the shutdown timeout") {
		t.Errorf("no warning logged:\n%s", r.logs)
	}
}

// pki is a throw-away CA with server and client certificates on disk.
type pki struct {
	caFile, serverCert, serverKey string
	client, rogue                 tls.Certificate
	roots                         *x509.CertPool
}

func newPKI(t *testing.T) *pki {
	t.Helper()
	dir := t.TempDir()
	newKey := func() *ecdsa.PrivateKey {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	serial := int64(0)
	issue := func(tmpl *x509.Certificate, parent *x509.Certificate, parentKey, key *ecdsa.PrivateKey) *x509.Certificate {
		serial++
		tmpl.SerialNumber = big.NewInt(serial)
		tmpl.NotBefore = time.Now().Add(-time.Hour)
		tmpl.NotAfter = time.Now().Add(time.Hour)
		if parent == nil {
			parent, parentKey = tmpl, key
		}
		der, err := x509.CreateCertificate(rand.Reader, tmpl, parent, &key.PublicKey, parentKey)
		if err != nil {
			t.Fatal(err)
		}
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	caTmpl := func(name string) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: name}, IsCA: true, BasicConstraintsValid: true,
			KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	}
	leaf := func(name string, usage x509.ExtKeyUsage) *x509.Certificate {
		return &x509.Certificate{Subject: pkix.Name{CommonName: name}, KeyUsage: x509.KeyUsageDigitalSignature,
			ExtKeyUsage: []x509.ExtKeyUsage{usage}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	}
	writePEM := func(name, typ string, der []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der}), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	keyDER := func(k *ecdsa.PrivateKey) []byte {
		der, err := x509.MarshalECPrivateKey(k)
		if err != nil {
			t.Fatal(err)
		}
		return der
	}
	pair := func(c *x509.Certificate, k *ecdsa.PrivateKey) tls.Certificate {
		return tls.Certificate{Certificate: [][]byte{c.Raw}, PrivateKey: k, Leaf: c}
	}

	caKey, rogueCAKey := newKey(), newKey()
	ca := issue(caTmpl("test CA"), nil, nil, caKey)
	rogueCA := issue(caTmpl("rogue CA"), nil, nil, rogueCAKey)
	srvKey, cliKey, rogueKey := newKey(), newKey(), newKey()
	srv := issue(leaf("vmm-daemon", x509.ExtKeyUsageServerAuth), ca, caKey, srvKey)
	cli := issue(leaf("operator", x509.ExtKeyUsageClientAuth), ca, caKey, cliKey)
	rogue := issue(leaf("intruder", x509.ExtKeyUsageClientAuth), rogueCA, rogueCAKey, rogueKey)

	p := &pki{
		caFile:     writePEM("ca.pem", "CERTIFICATE", ca.Raw),
		serverCert: writePEM("server.pem", "CERTIFICATE", srv.Raw),
		serverKey:  writePEM("server-key.pem", "EC PRIVATE KEY", keyDER(srvKey)),
		client:     pair(cli, cliKey),
		rogue:      pair(rogue, rogueKey),
		roots:      x509.NewCertPool(),
	}
	p.roots.AddCert(ca)
	return p
}

// dialTCP checks the health of the daemon over TCP with the given TLS
// client configuration (nil: plaintext).
func dialTCP(t *testing.T, addr string, tc *tls.Config) error {
	t.Helper()
	creds := insecure.NewCredentials()
	if tc != nil {
		creds = credentials.NewTLS(tc)
	}
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(creds))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
	defer cancel()
	return healthCheck(ctx, conn)
}

func TestRunTCPMutualTLS(t *testing.T) {
	p := newPKI(t)
	cfg := testConfig(t, fakeFirecracker(t))
	cfg.GRPC.TCPAddr = "127.0.0.1:0"
	cfg.GRPC.TLSCert, cfg.GRPC.TLSKey, cfg.GRPC.TLSClientCA = p.serverCert, p.serverKey, p.caFile
	r := startDaemon(t, cfg)
	addr := r.d.TCPAddr().String()

	if err := dialTCP(t, addr, &tls.Config{RootCAs: p.roots, Certificates: []tls.Certificate{p.client}}); err != nil {
		t.Errorf("client with a certificate refused: %v", err)
	}
	if err := dialTCP(t, addr, &tls.Config{RootCAs: p.roots}); err == nil {
		t.Error("client without a certificate served")
	}
	if err := dialTCP(t, addr, &tls.Config{RootCAs: p.roots, Certificates: []tls.Certificate{p.rogue}}); err == nil {
		t.Error("client with a certificate from another CA served")
	}
	if err := dialTCP(t, addr, &tls.Config{RootCAs: p.roots, Certificates: []tls.Certificate{p.client}, MaxVersion: tls.VersionTLS11}); err == nil {
		t.Error("TLS 1.1 client served")
	}
	if err := dialTCP(t, addr, nil); err == nil {
		t.Error("plaintext client served")
	}
	if err := r.wait(t); err != nil {
		t.Fatal(err)
	}
}

func TestRunTCPInsecureWarns(t *testing.T) {
	cfg := testConfig(t, fakeFirecracker(t))
	cfg.GRPC.TCPAddr = "127.0.0.1:0"
	cfg.GRPC.TCPInsecure = true
	r := startDaemon(t, cfg)
	if err := dialTCP(t, r.d.TCPAddr().String(), nil); err != nil {
		t.Errorf("plaintext client: %v", err)
	}
	logs := r.logs.String()
	if !strings.Contains(logs, "level=WARN") || !strings.Contains(logs, "NO authentication") {
		t.Errorf("no loud warning:\n%s", logs)
	}
	if err := r.wait(t); err != nil {
		t.Fatal(err)
	}
}

func TestRunTCPWithoutTLSIsRefused(t *testing.T) {
	// Through the config file.
	_, err := Load(writeConfig(t, "[grpc]\ntcp_addr = \"127.0.0.1:0\"\n"), true, Overrides{})
	if err == nil || !strings.Contains(err.Error(), "never served without authentication") {
		t.Errorf("Load: %v", err)
	}
	// And when a Config is built by hand.
	cfg := testConfig(t, fakeFirecracker(t))
	cfg.GRPC.TCPAddr = "127.0.0.1:0"
	log, _ := testLogger()
	d := New(cfg, log)
	mgr := &fakeManager{}
	d.newManager = func(sandbox.Config) (manager, error) { return mgr, nil }
	if err := d.Run(t.Context()); err == nil || !strings.Contains(err.Error(), "tls_cert") {
		t.Errorf("Run: %v", err)
	}
	if !mgr.wasShutdown() {
		t.Error("manager not shut down after the failed start")
	}
	if _, err := os.Lstat(cfg.GRPC.UnixSocket); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}
