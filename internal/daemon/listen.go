package daemon

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"

	"github.com/firecracker-vmm/firecracker-vmm/internal/network"
)

// probeTimeout bounds the dial that checks whether a daemon already
// listens on the socket.
const probeTimeout = 2 * time.Second

// listenUnix binds the API's unix socket at path: it creates the parent
// directory, refuses to start when a daemon answers on an existing socket,
// removes a stale one, binds, sets mode 0660 and, when gid >= 0, the
// socket's group.
func listenUnix(ctx context.Context, path string, gid int, log *slog.Logger) (net.Listener, error) {
	if err := checkSocketPath(path); err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("creating the socket directory: %w", err)
	}
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
	case err != nil:
		return nil, fmt.Errorf("socket %s: %w", path, err)
	case fi.Mode().Type() != fs.ModeSocket:
		return nil, fmt.Errorf("%s exists and is not a socket; refusing to replace it", path)
	default:
		d := net.Dialer{Timeout: probeTimeout}
		conn, err := d.DialContext(ctx, "unix", path)
		switch {
		case err == nil:
			conn.Close()
			return nil, fmt.Errorf("another daemon is listening on %s", path)
		case errors.Is(err, syscall.EAGAIN):
			// The listener's backlog is full: it is alive.
			return nil, fmt.Errorf("another daemon is listening on %s", path)
		case errors.Is(err, syscall.ECONNREFUSED):
			log.Info("removing stale socket", slog.String("path", path))
			if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("removing stale socket: %w", err)
			}
		default:
			return nil, fmt.Errorf("checking the existing socket %s: %w", path, err)
		}
	}
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "unix", path)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", path, err)
	}
	if err := os.Chmod(path, 0o660); err != nil {
		l.Close()
		return nil, fmt.Errorf("socket %s: %w", path, err)
	}
	if gid >= 0 {
		if err := os.Chown(path, -1, gid); err != nil {
			l.Close()
			return nil, fmt.Errorf("socket %s: setting group %d: %w", path, gid, err)
		}
	}
	return l, nil
}

// tcpServerOptions returns the transport credentials of the TCP listener:
// mutual TLS (TLS 1.2+, client certificates required and verified against
// tls_client_ca), or none when tcp_insecure is set, which is logged loudly.
func tcpServerOptions(g GRPCConfig, log *slog.Logger) ([]grpc.ServerOption, error) {
	if g.TCPInsecure {
		log.Warn("INSECURE: the TCP listener has NO authentication and NO encryption; anyone who can connect to "+
			g.TCPAddr+" controls this daemon and its sandboxes (grpc.tcp_insecure = true)",
			slog.String("tcp_addr", g.TCPAddr))
		return nil, nil
	}
	if g.TLSCert == "" || g.TLSKey == "" || g.TLSClientCA == "" {
		return nil, errors.New("TCP needs grpc.tls_cert, grpc.tls_key and grpc.tls_client_ca (or grpc.tcp_insecure = true)")
	}
	cfg, err := serverTLSConfig(g)
	if err != nil {
		return nil, err
	}
	return []grpc.ServerOption{grpc.Creds(credentials.NewTLS(cfg))}, nil
}

// serverTLSConfig loads the server's key pair and the client CA.
func serverTLSConfig(g GRPCConfig) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(g.TLSCert, g.TLSKey)
	if err != nil {
		return nil, fmt.Errorf("grpc.tls_cert/grpc.tls_key: %w", err)
	}
	pem, err := os.ReadFile(g.TLSClientCA)
	if err != nil {
		return nil, fmt.Errorf("grpc.tls_client_ca: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("grpc.tls_client_ca: %s holds no PEM certificate", g.TLSClientCA)
	}
	return &tls.Config{
		Certificates: []tls.Certificate{cert},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
		MinVersion:   tls.VersionTLS12,
	}, nil
}

// listenTCP binds the TCP listener.
func listenTCP(ctx context.Context, addr string) (net.Listener, error) {
	var lc net.ListenConfig
	l, err := lc.Listen(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", addr, err)
	}
	return l, nil
}

// networkConfig returns the network manager's configuration with the TCP
// API's port closed to sandboxes: the port tl is actually bound to (which
// differs from the configured one when tcp_addr names port 0), or none
// without a TCP listener.
func networkConfig(cfg *Config, tl net.Listener, log *slog.Logger) network.Config {
	nc := cfg.NetworkManagerConfig(log)
	if tl == nil {
		return nc
	}
	if a, ok := tl.Addr().(*net.TCPAddr); ok && a.Port > 0 && a.Port <= 0xffff {
		nc.DenyTCPPorts = []uint16{uint16(a.Port)}
	}
	return nc
}
