// Package client is the Go client of vmm-daemon's sandbox.v1 API. It dials
// the daemon's unix socket (or a TCP address, optionally with TLS client
// certificates), checks that a daemon answers before returning, wraps the
// SandboxService and SandboxSnapshotService stubs and maps every error the
// daemon returns back to an errdefs class (errgrpc.ToNative), so callers
// test errors with errors.Is against the errdefs classes (or
// errdefs.IsNotFound) and print them as plain sentences.
//
// It imports the API, errdefs and gRPC only; never daemon-side packages.
package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/durationpb"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs/errgrpc"
)

// DefaultSocket is where vmm-daemon listens unless configured otherwise.
const DefaultSocket = "/run/firecracker-vmm/vmm.sock"

// DefaultConnectTimeout bounds the connection check New makes.
const DefaultConnectTimeout = 3 * time.Second

// TLSFiles names the PEM files of a TLS client configuration. All fields
// are optional: without CA the system roots verify the daemon; Cert and Key
// (a client certificate) go together.
type TLSFiles struct {
	// Cert is the client certificate.
	Cert string
	// Key is the client certificate's private key.
	Key string
	// CA is the bundle that verifies the daemon's certificate.
	CA string
	// ServerName overrides the name the daemon's certificate is checked
	// against (default: the host part of the address).
	ServerName string
}

// IsZero reports whether no TLS file is set.
func (f TLSFiles) IsZero() bool {
	return f == TLSFiles{}
}

// Options selects the daemon to talk to.
type Options struct {
	// Socket is the daemon's unix socket (default DefaultSocket). Ignored
	// when Addr is set.
	Socket string
	// Addr is a TCP host:port. When set, the client uses TCP instead of the
	// unix socket.
	Addr string
	// TLS configures TLS for Addr. When zero, TCP is plaintext (the daemon
	// accepts that only when its operator set tcp_insecure).
	TLS TLSFiles
	// ConnectTimeout bounds the initial connection check (default
	// DefaultConnectTimeout).
	ConnectTimeout time.Duration
}

// Client talks to one vmm-daemon. It is safe for concurrent use. Close it
// when done.
type Client struct {
	conn      *grpc.ClientConn
	sandboxes sandboxv1.SandboxServiceClient
	snapshots sandboxv1.SandboxSnapshotServiceClient
	// target names the daemon in error messages (socket path or address).
	target string
	// hint tells the user how to choose another daemon.
	hint string
	// tlsHint is added to connection failures when TLS is used without a
	// client certificate.
	tlsHint string
}

// http2Preface is the client connection preface of HTTP/2 followed by an
// empty SETTINGS frame.
const http2Preface = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + "\x00\x00\x00\x04\x00\x00\x00\x00\x00"

// New connects to the daemon that opts names. It first checks, within
// opts.ConnectTimeout, that something accepts connections there, so that a
// missing daemon fails at once with a plain sentence (an error of class
// errdefs.ErrUnavailable) instead of on the first call.
func New(ctx context.Context, opts Options) (*Client, error) {
	timeout := opts.ConnectTimeout
	if timeout <= 0 {
		timeout = DefaultConnectTimeout
	}
	if opts.Addr != "" {
		return newTCP(ctx, opts, timeout)
	}
	return newUnix(ctx, opts, timeout)
}

func newUnix(ctx context.Context, opts Options, timeout time.Duration) (*Client, error) {
	path := opts.Socket
	if path == "" {
		path = DefaultSocket
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("socket path %q: %w", path, errdefs.ErrInvalidArgument)
	}
	c := &Client{target: abs, hint: "is vmm-daemon running? set --socket or VMM_SOCKET"}
	if err := c.check(ctx, timeout, func(ctx context.Context) error {
		conn, err := (&net.Dialer{}).DialContext(ctx, "unix", abs)
		if err != nil {
			return err
		}
		return conn.Close()
	}); err != nil {
		return nil, err
	}
	// The dialer ignores the address gRPC hands it (the target in one of
	// its spellings): this client talks to one socket.
	dial := func(ctx context.Context, _ string) (net.Conn, error) {
		return (&net.Dialer{}).DialContext(ctx, "unix", abs)
	}
	conn, err := grpc.NewClient("unix://"+abs,
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		grpc.WithContextDialer(dial),
		grpc.WithUnaryInterceptor(waitRecovery),
	)
	if err != nil {
		return nil, fmt.Errorf("daemon socket %s: %w", abs, err)
	}
	c.setConn(conn)
	return c, nil
}

func newTCP(ctx context.Context, opts Options, timeout time.Duration) (*Client, error) {
	c := &Client{target: opts.Addr, hint: "is vmm-daemon running with a TCP address? set --addr"}
	if !opts.TLS.IsZero() && opts.TLS.Cert == "" {
		c.tlsHint = " (the daemon may require a TLS client certificate: set --tls-cert and --tls-key)"
	}
	host, _, err := net.SplitHostPort(opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("address %q: want host:port: %w", opts.Addr, errdefs.ErrInvalidArgument)
	}
	var tlsConf *tls.Config
	if !opts.TLS.IsZero() {
		tlsConf, err = loadTLS(opts.TLS, host)
		if err != nil {
			return nil, err
		}
	}
	if err := c.check(ctx, timeout, func(ctx context.Context) error {
		conn, err := (&net.Dialer{}).DialContext(ctx, "tcp", opts.Addr)
		if err != nil {
			return err
		}
		defer conn.Close()
		if tlsConf == nil {
			return nil
		}
		cfg := tlsConf.Clone()
		cfg.NextProtos = []string{"h2"}
		tc := tls.Client(conn, cfg)
		if err := tc.HandshakeContext(ctx); err != nil {
			return &tlsError{err: err}
		}
		// With TLS 1.3 the daemon judges the client certificate after
		// the handshake is complete on this side: send the HTTP/2
		// preface and read the daemon's first frame to hear its verdict.
		if dl, ok := ctx.Deadline(); ok {
			_ = tc.SetDeadline(dl)
		}
		_, werr := tc.Write([]byte(http2Preface))
		var frame [9]byte
		if _, err := io.ReadFull(tc, frame[:]); err != nil {
			return &tlsError{err: err}
		}
		if werr != nil {
			return &tlsError{err: werr}
		}
		return nil
	}); err != nil {
		return nil, err
	}
	creds := insecure.NewCredentials()
	if tlsConf != nil {
		creds = credentials.NewTLS(tlsConf)
	}
	conn, err := grpc.NewClient("dns:///"+opts.Addr, grpc.WithTransportCredentials(creds),
		grpc.WithUnaryInterceptor(waitRecovery))
	if err != nil {
		return nil, fmt.Errorf("daemon address %s: %w", opts.Addr, err)
	}
	c.setConn(conn)
	return c, nil
}

func (c *Client) setConn(conn *grpc.ClientConn) {
	c.conn = conn
	c.sandboxes = sandboxv1.NewSandboxServiceClient(conn)
	c.snapshots = sandboxv1.NewSandboxSnapshotServiceClient(conn)
}

// loadTLS builds a client TLS configuration from PEM files.
func loadTLS(f TLSFiles, host string) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: f.ServerName}
	if cfg.ServerName == "" {
		cfg.ServerName = host
	}
	if (f.Cert == "") != (f.Key == "") {
		return nil, fmt.Errorf("a TLS client certificate needs both --tls-cert and --tls-key: %w", errdefs.ErrInvalidArgument)
	}
	if f.Cert != "" {
		pair, err := tls.LoadX509KeyPair(f.Cert, f.Key)
		if err != nil {
			return nil, fmt.Errorf("loading TLS client certificate %s: %w", f.Cert, err)
		}
		cfg.Certificates = []tls.Certificate{pair}
	}
	if f.CA != "" {
		pem, err := os.ReadFile(f.CA)
		if err != nil {
			return nil, fmt.Errorf("reading TLS CA bundle: %w", err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("TLS CA bundle %s holds no PEM certificate: %w", f.CA, errdefs.ErrInvalidArgument)
		}
		cfg.RootCAs = pool
	}
	return cfg, nil
}

// tlsError marks a failed TLS handshake during the connection check.
type tlsError struct{ err error }

func (e *tlsError) Error() string { return e.err.Error() }
func (e *tlsError) Unwrap() error { return e.err }

// check runs probe within timeout and turns its failure into a sentence
// naming the daemon that was tried.
func (c *Client) check(parent context.Context, timeout time.Duration, probe func(context.Context) error) error {
	ctx, cancel := context.WithTimeout(parent, timeout)
	defer cancel()
	err := probe(ctx)
	if err == nil {
		return nil
	}
	var te *tlsError
	switch {
	case errors.As(err, &te):
		msg := fmt.Sprintf("TLS handshake with the daemon on %s failed: %v", c.target, te.err)
		if !strings.Contains(msg, "tls: ") && !strings.Contains(msg, "x509: ") {
			msg += c.tlsHint
		}
		return &Error{msg: msg, class: errdefs.ErrUnavailable}
	case errors.Is(err, syscall.ENOENT), errors.Is(err, syscall.ECONNREFUSED):
		return c.noDaemon()
	case errors.Is(err, syscall.EACCES), errors.Is(err, syscall.EPERM):
		return &Error{
			msg:   fmt.Sprintf("permission denied on the daemon socket %s (run as root or as a member of the socket's group)", c.target),
			class: errdefs.ErrPermissionDenied,
		}
	case parent.Err() != nil:
		return fmt.Errorf("connecting to the daemon on %s: %w", c.target, parent.Err())
	case ctx.Err() != nil:
		return &Error{msg: fmt.Sprintf("the daemon on %s did not answer within %s (%s)", c.target, timeout, c.hint), class: errdefs.ErrUnavailable}
	}
	return &Error{msg: fmt.Sprintf("cannot connect to the daemon on %s: %v (%s)", c.target, err, c.hint), class: errdefs.ErrUnavailable}
}

func (c *Client) noDaemon() error {
	return &Error{msg: fmt.Sprintf("no daemon is listening on %s (%s)", c.target, c.hint), class: errdefs.ErrUnavailable}
}

// Close releases the connection.
func (c *Client) Close() error {
	if err := c.conn.Close(); err != nil {
		return fmt.Errorf("closing connection to %s: %w", c.target, err)
	}
	return nil
}

// Error is an error from the daemon or the transport, in words, with its
// errdefs class. errors.Is(err, errdefs.ErrNotFound) and friends work on it.
type Error struct {
	msg   string
	class error
	st    *status.Status
}

// Error returns the sentence.
func (e *Error) Error() string { return e.msg }

// Unwrap returns the errdefs class (nil when the daemon's code has none).
func (e *Error) Unwrap() error { return e.class }

// GRPCStatus returns the original status, if the error came from a call.
func (e *Error) GRPCStatus() *status.Status { return e.st }

// fromRPC maps an error returned by a stub to an errdefs-classed error with
// a message free of gRPC jargon. nil and io.EOF pass through.
func (c *Client) fromRPC(err error) error {
	if err == nil || err == io.EOF {
		return err
	}
	s, ok := status.FromError(err)
	if !ok {
		return err
	}
	msg := s.Message()
	switch s.Code() {
	case codes.Unavailable:
		if isTransportMessage(msg) {
			if strings.Contains(msg, "connection refused") || strings.Contains(msg, "no such file or directory") {
				e := c.noDaemon().(*Error)
				e.st = s
				return e
			}
			if i := strings.Index(msg, "tls: "); i >= 0 {
				if j := strings.LastIndex(msg[:i], "remote error: "); j >= 0 {
					i = j
				}
				return &Error{msg: fmt.Sprintf("TLS with the daemon on %s failed: %s", c.target, strings.TrimRight(msg[i:], `"`)), class: errdefs.ErrUnavailable, st: s}
			}
			return &Error{msg: fmt.Sprintf("lost the connection to the daemon on %s%s", c.target, c.tlsHint), class: errdefs.ErrUnavailable, st: s}
		}
	case codes.Unimplemented:
		if svc, ok := strings.CutPrefix(msg, "unknown service "); ok {
			return &Error{msg: fmt.Sprintf("the daemon on %s does not offer %s (is it older than this vmm?)", c.target, svc), class: errdefs.ErrNotImplemented, st: s}
		}
	case codes.Internal:
		return &Error{msg: "internal error in the daemon: " + msg, st: s}
	case codes.Unauthenticated:
		return &Error{msg: "not authenticated: " + msg, st: s}
	case codes.OK:
		return nil
	}
	if n := errgrpc.ToNative(err); n != err {
		return n
	}
	// A code with no errdefs class (Unknown, OutOfRange, DataLoss): keep
	// the daemon's message.
	return &Error{msg: msg, st: s}
}

// isTransportMessage reports whether an Unavailable message comes from the
// gRPC transport rather than from the daemon.
func isTransportMessage(msg string) bool {
	for _, p := range []string{"connection error", "error reading from server", "transport is closing", "transport: ",
		"connection closed", "last connection error", "name resolver error", "broken pipe", "connection reset"} {
		if strings.Contains(msg, p) {
			return true
		}
	}
	for _, p := range []string{"write ", "read ", "dial "} {
		if strings.HasPrefix(msg, p) {
			return true
		}
	}
	return false
}

// Create asks for a new sandbox and returns it (in STARTING; it boots in
// the background).
func (c *Client) Create(ctx context.Context, req *sandboxv1.CreateRequest) (*sandboxv1.Sandbox, error) {
	resp, err := c.sandboxes.Create(ctx, req)
	if err != nil {
		return nil, c.fromRPC(err)
	}
	return resp.GetSandbox(), nil
}

// Inspect returns the full record of one sandbox.
func (c *Client) Inspect(ctx context.Context, id string) (*sandboxv1.Sandbox, error) {
	resp, err := c.sandboxes.Inspect(ctx, &sandboxv1.InspectRequest{Id: id})
	if err != nil {
		return nil, c.fromRPC(err)
	}
	return resp.GetSandbox(), nil
}

// List returns the sandboxes that match every filter in req.
func (c *Client) List(ctx context.Context, req *sandboxv1.ListRequest) ([]*sandboxv1.Sandbox, error) {
	resp, err := c.sandboxes.List(ctx, req)
	if err != nil {
		return nil, c.fromRPC(err)
	}
	return resp.GetSandboxes(), nil
}

// Stop stops a sandbox, waiting up to timeout (0: the daemon's default)
// for a graceful shutdown before killing it, and returns it.
func (c *Client) Stop(ctx context.Context, id string, timeout time.Duration) (*sandboxv1.Sandbox, error) {
	req := &sandboxv1.StopRequest{Id: id}
	if timeout > 0 {
		req.Timeout = durationpb.New(timeout)
	}
	resp, err := c.sandboxes.Stop(ctx, req)
	if err != nil {
		return nil, c.fromRPC(err)
	}
	return resp.GetSandbox(), nil
}

// Remove deletes a sandbox; force kills one that is still running.
func (c *Client) Remove(ctx context.Context, id string, force bool) error {
	_, err := c.sandboxes.Remove(ctx, &sandboxv1.RemoveRequest{Id: id, Force: force})
	return c.fromRPC(err)
}

// EventStream receives lifecycle events. It ends when the context given to
// Client.Events is canceled or the daemon ends the stream.
type EventStream struct {
	c      *Client
	stream grpc.ServerStreamingClient[sandboxv1.Event]
}

// Recv returns the next event. It returns io.EOF when the daemon ended the
// stream normally, and a classed error otherwise.
func (s *EventStream) Recv() (*sandboxv1.Event, error) {
	ev, err := s.stream.Recv()
	if err != nil {
		return nil, s.c.fromRPC(err)
	}
	return ev, nil
}

// Events opens a stream of lifecycle events filtered by req. Cancel ctx to
// end it.
func (c *Client) Events(ctx context.Context, req *sandboxv1.EventsRequest) (*EventStream, error) {
	stream, err := c.sandboxes.Events(ctx, req)
	if err != nil {
		return nil, c.fromRPC(err)
	}
	return &EventStream{c: c, stream: stream}, nil
}

// Checkpoint snapshots a sandbox.
func (c *Client) Checkpoint(ctx context.Context, req *sandboxv1.CheckpointRequest) (*sandboxv1.Snapshot, error) {
	resp, err := c.snapshots.Checkpoint(ctx, req)
	if err != nil {
		return nil, c.fromRPC(err)
	}
	return resp.GetSnapshot(), nil
}

// Restore creates a new sandbox from a snapshot and returns it.
func (c *Client) Restore(ctx context.Context, req *sandboxv1.RestoreRequest) (*sandboxv1.Sandbox, error) {
	resp, err := c.snapshots.Restore(ctx, req)
	if err != nil {
		return nil, c.fromRPC(err)
	}
	return resp.GetSandbox(), nil
}

// ListSnapshots lists snapshots, all of them or those of one sandbox.
func (c *Client) ListSnapshots(ctx context.Context, sandboxID string) ([]*sandboxv1.Snapshot, error) {
	resp, err := c.snapshots.ListSnapshots(ctx, &sandboxv1.ListSnapshotsRequest{SandboxId: sandboxID})
	if err != nil {
		return nil, c.fromRPC(err)
	}
	return resp.GetSnapshots(), nil
}

// DeleteSnapshot removes a snapshot and its files.
func (c *Client) DeleteSnapshot(ctx context.Context, snapshotID string) error {
	_, err := c.snapshots.DeleteSnapshot(ctx, &sandboxv1.DeleteSnapshotRequest{SnapshotId: snapshotID})
	return c.fromRPC(err)
}
