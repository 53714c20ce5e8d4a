package firecracker

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"syscall"
	"time"
)

// maxResponseBody bounds how much of a response body the client reads.
const maxResponseBody = 4 << 20

// Client talks to one Firecracker process over its API unix socket. It is
// safe for concurrent use; Firecracker itself serves requests one at a time.
// Call Close when done to release idle connections.
type Client struct {
	socketPath string
	transport  *http.Transport
	http       *http.Client
	// onDeprecated, when set, is called (synchronously, from the calling
	// goroutine) for every answer carrying "Deprecation: true". No exported
	// Option sets it today; the tests do.
	onDeprecated func(method, path string)
}

// Option configures a Client.
type Option func(*Client)

// NewClient returns a client for the API socket at socketPath. Nothing is
// dialled until the first request.
func NewClient(socketPath string, opts ...Option) *Client {
	c := &Client{socketPath: socketPath}
	c.transport = &http.Transport{
		DialContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, "unix", socketPath)
		},
		MaxConnsPerHost:     2,
		MaxIdleConnsPerHost: 2,
		IdleConnTimeout:     30 * time.Second,
		DisableCompression:  true,
		ForceAttemptHTTP2:   false,
	}
	// No Timeout: calls are bounded by their contexts.
	c.http = &http.Client{Transport: c.transport}
	for _, o := range opts {
		o(c)
	}
	return c
}

// SocketPath returns the path of the API socket.
func (c *Client) SocketPath() string { return c.socketPath }

// Close releases idle connections. The client stays usable; a later call
// dials again.
func (c *Client) Close() {
	c.transport.CloseIdleConnections()
}

// do sends one request. in (if not nil) is marshalled as the JSON body; out
// (if not nil) receives the decoded 200 body.
func (c *Client) do(ctx context.Context, method, path string, in, out any) error {
	var body io.Reader
	var payload []byte
	if in != nil {
		var err error
		payload, err = json.Marshal(in)
		if err != nil {
			return fmt.Errorf("firecracker %s %s: encoding body: %w", method, path, err)
		}
		body = bytes.NewReader(payload)
	}
	req, err := http.NewRequestWithContext(ctx, method, "http://localhost"+path, body)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	if in != nil {
		req.ContentLength = int64(len(payload))
		req.Header.Set("Content-Type", "application/json")
	}
	req.Header.Set("Accept", "application/json")
	resp, err := c.http.Do(req)
	if err != nil {
		return fmt.Errorf("firecracker %s %s: %w", method, path, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, maxResponseBody))
	if err != nil {
		return fmt.Errorf("firecracker %s %s: reading response: %w", method, path, err)
	}
	if c.onDeprecated != nil && resp.Header.Get("Deprecation") == "true" {
		c.onDeprecated(method, path)
	}
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		return &APIError{Method: method, Path: path, StatusCode: resp.StatusCode, FaultMessage: decodeFault(data)}
	}
	if out != nil {
		if err := json.Unmarshal(data, out); err != nil {
			return fmt.Errorf("firecracker %s %s: decoding response: %w", method, path, err)
		}
	}
	return nil
}

// resourcePath joins a collection path and an escaped id.
func resourcePath(collection, id string) string {
	return collection + "/" + url.PathEscape(id)
}

// DescribeInstance returns GET / .
func (c *Client) DescribeInstance(ctx context.Context) (InstanceInfo, error) {
	var info InstanceInfo
	err := c.do(ctx, http.MethodGet, "/", nil, &info)
	return info, err
}

// Version returns GET /version.
func (c *Client) Version(ctx context.Context) (FirecrackerVersion, error) {
	var v FirecrackerVersion
	err := c.do(ctx, http.MethodGet, "/version", nil, &v)
	return v, err
}

// VMConfig returns GET /vm/config.
func (c *Client) VMConfig(ctx context.Context) (FullVMConfiguration, error) {
	var cfg FullVMConfiguration
	err := c.do(ctx, http.MethodGet, "/vm/config", nil, &cfg)
	return cfg, err
}

// MachineConfig returns GET /machine-config.
func (c *Client) MachineConfig(ctx context.Context) (MachineConfiguration, error) {
	var mc MachineConfiguration
	err := c.do(ctx, http.MethodGet, "/machine-config", nil, &mc)
	return mc, err
}

// PutMachineConfig sends PUT /machine-config (pre-boot only).
func (c *Client) PutMachineConfig(ctx context.Context, mc MachineConfiguration) error {
	return c.do(ctx, http.MethodPut, "/machine-config", mc, nil)
}

// PutBootSource sends PUT /boot-source (pre-boot only).
func (c *Client) PutBootSource(ctx context.Context, bs BootSource) error {
	return c.do(ctx, http.MethodPut, "/boot-source", bs, nil)
}

// PutDrive sends PUT /drives/{d.DriveID}.
func (c *Client) PutDrive(ctx context.Context, d Drive) error {
	return c.do(ctx, http.MethodPut, resourcePath("/drives", d.DriveID), d, nil)
}

// PatchDrive sends PATCH /drives/{d.DriveID} (post-boot only).
func (c *Client) PatchDrive(ctx context.Context, d PartialDrive) error {
	return c.do(ctx, http.MethodPatch, resourcePath("/drives", d.DriveID), d, nil)
}

// PutNetworkInterface sends PUT /network-interfaces/{n.IfaceID}.
func (c *Client) PutNetworkInterface(ctx context.Context, n NetworkInterface) error {
	return c.do(ctx, http.MethodPut, resourcePath("/network-interfaces", n.IfaceID), n, nil)
}

// PatchNetworkInterface sends PATCH /network-interfaces/{n.IfaceID} (post-boot only).
func (c *Client) PatchNetworkInterface(ctx context.Context, n PartialNetworkInterface) error {
	return c.do(ctx, http.MethodPatch, resourcePath("/network-interfaces", n.IfaceID), n, nil)
}

// PutVsock sends PUT /vsock (pre-boot only).
func (c *Client) PutVsock(ctx context.Context, v Vsock) error {
	return c.do(ctx, http.MethodPut, "/vsock", v, nil)
}

// PutLogger sends PUT /logger (pre-boot only).
func (c *Client) PutLogger(ctx context.Context, l Logger) error {
	return c.do(ctx, http.MethodPut, "/logger", l, nil)
}

// PutMetrics sends PUT /metrics (pre-boot only, once per process).
func (c *Client) PutMetrics(ctx context.Context, m Metrics) error {
	return c.do(ctx, http.MethodPut, "/metrics", m, nil)
}

// PutMMDS sends PUT /mmds with data (any JSON-encodable value) replacing the data store.
func (c *Client) PutMMDS(ctx context.Context, data any) error {
	return c.do(ctx, http.MethodPut, "/mmds", data, nil)
}

// PutMMDSConfig sends PUT /mmds/config (pre-boot only).
func (c *Client) PutMMDSConfig(ctx context.Context, cfg MMDSConfig) error {
	return c.do(ctx, http.MethodPut, "/mmds/config", cfg, nil)
}

// PutEntropy sends PUT /entropy (pre-boot only).
func (c *Client) PutEntropy(ctx context.Context, e Entropy) error {
	return c.do(ctx, http.MethodPut, "/entropy", e, nil)
}

// PutBalloon sends PUT /balloon (pre-boot only).
func (c *Client) PutBalloon(ctx context.Context, b Balloon) error {
	return c.do(ctx, http.MethodPut, "/balloon", b, nil)
}

// Action sends PUT /actions with the given action type.
func (c *Client) Action(ctx context.Context, action ActionType) error {
	return c.do(ctx, http.MethodPut, "/actions", InstanceActionInfo{ActionType: action}, nil)
}

// InstanceStart starts the configured microVM.
func (c *Client) InstanceStart(ctx context.Context) error {
	return c.Action(ctx, ActionInstanceStart)
}

// SendCtrlAltDel injects Ctrl+Alt+Del into the guest (x86, post-boot).
func (c *Client) SendCtrlAltDel(ctx context.Context) error {
	return c.Action(ctx, ActionSendCtrlAltDel)
}

// FlushMetrics asks Firecracker to write one metrics line (post-boot).
func (c *Client) FlushMetrics(ctx context.Context) error {
	return c.Action(ctx, ActionFlushMetrics)
}

// PatchVM sends PATCH /vm with the requested state (post-boot).
func (c *Client) PatchVM(ctx context.Context, state VMState) error {
	return c.do(ctx, http.MethodPatch, "/vm", VM{State: state}, nil)
}

// Pause pauses the microVM (idempotent).
func (c *Client) Pause(ctx context.Context) error { return c.PatchVM(ctx, VMStatePaused) }

// Resume resumes the microVM (idempotent).
func (c *Client) Resume(ctx context.Context) error { return c.PatchVM(ctx, VMStateResumed) }

// CreateSnapshot sends PUT /snapshot/create; the VM must be paused. It can
// take long for big guests: bound it with ctx accordingly.
func (c *Client) CreateSnapshot(ctx context.Context, p SnapshotCreateParams) error {
	return c.do(ctx, http.MethodPut, "/snapshot/create", p, nil)
}

// LoadSnapshot sends PUT /snapshot/load on a fresh process. Firecracker
// exits (code 1) after answering a failed load.
func (c *Client) LoadSnapshot(ctx context.Context, p SnapshotLoadParams) error {
	return c.do(ctx, http.MethodPut, "/snapshot/load", p, nil)
}

// WaitReady probes GET / until it succeeds, retrying while the socket file
// is missing or refuses connections (Firecracker creates the file at bind(),
// a moment before it listens). Any other error ends the wait; so does ctx.
func (c *Client) WaitReady(ctx context.Context) error {
	const interval = 5 * time.Millisecond
	t := time.NewTimer(0)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return fmt.Errorf("firecracker: waiting for API socket %s: %w", c.socketPath, ctx.Err())
		case <-t.C:
		}
		_, err := c.DescribeInstance(ctx)
		if err == nil {
			return nil
		}
		if !notReady(err) {
			if ctx.Err() != nil {
				return fmt.Errorf("firecracker: waiting for API socket %s: %w", c.socketPath, ctx.Err())
			}
			return fmt.Errorf("firecracker: waiting for API socket: %w", err)
		}
		t.Reset(interval)
	}
}

// notReady reports whether err means the server is not listening yet.
func notReady(err error) bool {
	return errors.Is(err, os.ErrNotExist) || errors.Is(err, syscall.ENOENT) ||
		errors.Is(err, syscall.ECONNREFUSED)
}
