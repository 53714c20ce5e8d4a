package firecracker

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m)
}

// shortDir returns a short temporary directory for sockets.
func shortDir(t *testing.T) string {
	t.Helper()
	dir, err := os.MkdirTemp("/tmp", "fct")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	return dir
}

// recorded is one request seen by the fake server.
type recorded struct {
	Method, Path, Body string
	ContentLength      int64
	TransferEncoding   []string
	HasCLHeader        bool
}

// fakeServer serves handler on a unix socket and records requests.
type fakeServer struct {
	mu   sync.Mutex
	reqs []recorded
}

func (f *fakeServer) requests() []recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]recorded(nil), f.reqs...)
}

func startFake(t *testing.T, handler http.HandlerFunc) (*fakeServer, string) {
	t.Helper()
	sock := filepath.Join(shortDir(t), "api.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	f := &fakeServer{}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		f.mu.Lock()
		f.reqs = append(f.reqs, recorded{
			Method: r.Method, Path: r.URL.Path, Body: string(b), ContentLength: r.ContentLength,
			TransferEncoding: r.TransferEncoding, HasCLHeader: r.Header.Get("Content-Length") != "" || r.ContentLength > 0,
		})
		f.mu.Unlock()
		handler(w, r)
	}))
	srv.Listener.Close()
	srv.Listener = ln
	srv.Start()
	t.Cleanup(srv.Close)
	return f, sock
}

func noContent(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusNoContent) }

func TestClientRequests(t *testing.T) {
	f, sock := startFake(t, noContent)
	c := NewClient(sock)
	defer c.Close()
	ctx := t.Context()
	calls := []struct {
		name       string
		call       func() error
		method     string
		path, body string
	}{
		{"machine-config", func() error { return c.PutMachineConfig(ctx, MachineConfiguration{VCPUCount: 1, MemSizeMiB: 128}) },
			"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`},
		{"boot-source", func() error { return c.PutBootSource(ctx, BootSource{KernelImagePath: "/k"}) },
			"PUT", "/boot-source", `{"kernel_image_path":"/k"}`},
		{"drive", func() error { return c.PutDrive(ctx, Drive{DriveID: "root_fs", IsRootDevice: true}) },
			"PUT", "/drives/root_fs", `{"drive_id":"root_fs","is_root_device":true}`},
		{"patch drive", func() error { return c.PatchDrive(ctx, PartialDrive{DriveID: "d", PathOnHost: "/n"}) },
			"PATCH", "/drives/d", `{"drive_id":"d","path_on_host":"/n"}`},
		{"net", func() error {
			return c.PutNetworkInterface(ctx, NetworkInterface{IfaceID: "eth0", HostDevName: "tap0"})
		},
			"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`},
		{"patch net", func() error { return c.PatchNetworkInterface(ctx, PartialNetworkInterface{IfaceID: "eth0"}) },
			"PATCH", "/network-interfaces/eth0", `{"iface_id":"eth0"}`},
		{"vsock", func() error { return c.PutVsock(ctx, Vsock{GuestCID: 3, UDSPath: "/v"}) },
			"PUT", "/vsock", `{"guest_cid":3,"uds_path":"/v"}`},
		{"logger", func() error { return c.PutLogger(ctx, Logger{LogPath: "/l"}) }, "PUT", "/logger", `{"log_path":"/l"}`},
		{"metrics", func() error { return c.PutMetrics(ctx, Metrics{MetricsPath: "/m"}) }, "PUT", "/metrics", `{"metrics_path":"/m"}`},
		{"mmds", func() error { return c.PutMMDS(ctx, map[string]any{"latest": map[string]string{"a": "b"}}) },
			"PUT", "/mmds", `{"latest":{"a":"b"}}`},
		{"mmds config", func() error {
			return c.PutMMDSConfig(ctx, MMDSConfig{Version: MMDSV2, NetworkInterfaces: []string{"eth0"}})
		},
			"PUT", "/mmds/config", `{"version":"V2","network_interfaces":["eth0"]}`},
		{"entropy", func() error { return c.PutEntropy(ctx, Entropy{}) }, "PUT", "/entropy", `{}`},
		{"balloon", func() error { return c.PutBalloon(ctx, Balloon{AmountMiB: 1, DeflateOnOOM: true}) },
			"PUT", "/balloon", `{"amount_mib":1,"deflate_on_oom":true}`},
		{"start", func() error { return c.InstanceStart(ctx) }, "PUT", "/actions", `{"action_type":"InstanceStart"}`},
		{"ctrl-alt-del", func() error { return c.SendCtrlAltDel(ctx) }, "PUT", "/actions", `{"action_type":"SendCtrlAltDel"}`},
		{"flush", func() error { return c.FlushMetrics(ctx) }, "PUT", "/actions", `{"action_type":"FlushMetrics"}`},
		{"pause", func() error { return c.Pause(ctx) }, "PATCH", "/vm", `{"state":"Paused"}`},
		{"resume", func() error { return c.Resume(ctx) }, "PATCH", "/vm", `{"state":"Resumed"}`},
		{"snapshot create", func() error {
			return c.CreateSnapshot(ctx, SnapshotCreateParams{MemFilePath: "/m", SnapshotPath: "/s"})
		},
			"PUT", "/snapshot/create", `{"mem_file_path":"/m","snapshot_path":"/s"}`},
		{"snapshot load", func() error {
			return c.LoadSnapshot(ctx, SnapshotLoadParams{SnapshotPath: "/s", MemBackend: MemoryBackend{BackendType: MemoryBackendFile, BackendPath: "/m"}})
		}, "PUT", "/snapshot/load", `{"snapshot_path":"/s","mem_backend":{"backend_type":"File","backend_path":"/m"}}`},
	}
	for i, tc := range calls {
		if err := tc.call(); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		got := f.requests()
		if len(got) != i+1 {
			t.Fatalf("%s: %d requests recorded, want %d", tc.name, len(got), i+1)
		}
		r := got[i]
		if r.Method != tc.method || r.Path != tc.path || r.Body != tc.body {
			t.Errorf("%s: got %s %s %s, want %s %s %s", tc.name, r.Method, r.Path, r.Body, tc.method, tc.path, tc.body)
		}
		if r.ContentLength != int64(len(tc.body)) || len(r.TransferEncoding) != 0 {
			t.Errorf("%s: Content-Length %d, Transfer-Encoding %v; want %d and none", tc.name, r.ContentLength, r.TransferEncoding, len(tc.body))
		}
	}
}

func TestClientGets(t *testing.T) {
	_, sock := startFake(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		switch r.URL.Path {
		case "/":
			io.WriteString(w, `{"id":"vm-1","state":"Running","vmm_version":"1.16.1","app_name":"Firecracker"}`)
		case "/version":
			io.WriteString(w, `{"firecracker_version":"1.16.1"}`)
		case "/machine-config":
			io.WriteString(w, `{"vcpu_count":2,"mem_size_mib":256,"smt":false,"track_dirty_pages":true,"huge_pages":"None"}`)
		case "/vm/config":
			io.WriteString(w, `{"balloon":null,"drives":[],"boot-source":{"kernel_image_path":"/k"},"machine-config":{"vcpu_count":2,"mem_size_mib":256}}`)
		default:
			http.NotFound(w, r)
		}
	})
	c := NewClient(sock)
	defer c.Close()
	ctx := t.Context()
	info, err := c.DescribeInstance(ctx)
	if err != nil || info != (InstanceInfo{ID: "vm-1", State: StateRunning, VMMVersion: "1.16.1", AppName: "Firecracker"}) {
		t.Errorf("DescribeInstance = %+v, %v", info, err)
	}
	v, err := c.Version(ctx)
	if err != nil || v.FirecrackerVersion != "1.16.1" {
		t.Errorf("Version = %+v, %v", v, err)
	}
	mc, err := c.MachineConfig(ctx)
	if err != nil || mc.VCPUCount != 2 || mc.TrackDirtyPages == nil || !*mc.TrackDirtyPages {
		t.Errorf("MachineConfig = %+v, %v", mc, err)
	}
	full, err := c.VMConfig(ctx)
	if err != nil || full.BootSource == nil || full.BootSource.KernelImagePath != "/k" || full.MachineConfig.MemSizeMiB != 256 {
		t.Errorf("VMConfig = %+v, %v", full, err)
	}
}

func TestClientErrors(t *testing.T) {
	tests := []struct {
		name   string
		status int
		body   string
		want   string
	}{
		{"fault_message", 400, `{"fault_message":"Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)"}`,
			"Boot source error: The kernel file cannot be opened: No such file or directory (os error 2)"},
		{"mmds limit", 413, `{"fault_message":"MMDS limit exceeded error: The MMDS patch request doesn't fit."}`,
			"MMDS limit exceeded error: The MMDS patch request doesn't fit."},
		{"transport raw newline", 400, "{ \"error\": \"Request payload with size 60000 is larger than the limit of 51200 allowed by server.\nAll previous unanswered requests will be dropped.\" }",
			"Request payload with size 60000 is larger than the limit of 51200 allowed by server.\nAll previous unanswered requests will be dropped."},
		{"too many connections", 503, `{ "error": "Too many open connections" }`, "Too many open connections"},
		{"not json", 500, "boom\n", "boom"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, sock := startFake(t, func(w http.ResponseWriter, _ *http.Request) {
				w.Header().Set("Content-Type", "application/json")
				w.WriteHeader(tt.status)
				io.WriteString(w, tt.body)
			})
			c := NewClient(sock)
			defer c.Close()
			err := c.PutBootSource(t.Context(), BootSource{KernelImagePath: "/nope"})
			var apiErr *APIError
			if !errors.As(err, &apiErr) || !IsAPIError(err) {
				t.Fatalf("error %v (%T) is not an *APIError", err, err)
			}
			if apiErr.StatusCode != tt.status || apiErr.FaultMessage != tt.want || apiErr.Method != "PUT" || apiErr.Path != "/boot-source" {
				t.Errorf("APIError = %+v, want status %d message %q", apiErr, tt.status, tt.want)
			}
			if FaultMessage(err) != tt.want {
				t.Errorf("FaultMessage = %q", FaultMessage(err))
			}
			if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "status") {
				t.Errorf("Error() = %q lacks status or message", err.Error())
			}
		})
	}
}

// withDeprecationHandler registers f to be called (synchronously, from the
// calling goroutine) whenever Firecracker answers with the
// "Deprecation: true" header, i.e. the request used a deprecated feature.
func withDeprecationHandler(f func(method, path string)) Option {
	return func(c *Client) { c.onDeprecated = f }
}

func TestDeprecationHeader(t *testing.T) {
	_, sock := startFake(t, func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Deprecation", "true")
		w.WriteHeader(http.StatusNoContent)
	})
	var got []string
	c := NewClient(sock, withDeprecationHandler(func(method, path string) { got = append(got, method+" "+path) }))
	defer c.Close()
	if err := c.PutMMDSConfig(t.Context(), MMDSConfig{NetworkInterfaces: []string{"eth0"}}); err != nil {
		t.Fatal(err)
	}
	if len(got) != 1 || got[0] != "PUT /mmds/config" {
		t.Errorf("deprecation callbacks = %v", got)
	}
}

func TestContextCancellation(t *testing.T) {
	release := make(chan struct{})
	_, sock := startFake(t, func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
		w.WriteHeader(http.StatusNoContent)
	})
	defer close(release)
	c := NewClient(sock)
	defer c.Close()
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := c.CreateSnapshot(ctx, SnapshotCreateParams{MemFilePath: "/m", SnapshotPath: "/s"})
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v, want DeadlineExceeded", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Errorf("cancellation took %v", d)
	}
}

func TestWaitReady(t *testing.T) {
	t.Run("socket appears late", func(t *testing.T) {
		dir := shortDir(t)
		sock := filepath.Join(dir, "late.sock")
		c := NewClient(sock)
		defer c.Close()
		srvDone := make(chan struct{})
		var srv *http.Server
		var mu sync.Mutex
		timer := time.AfterFunc(100*time.Millisecond, func() {
			defer close(srvDone)
			ln, err := net.Listen("unix", sock)
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			srv = &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				io.WriteString(w, `{"id":"a","state":"Not started","vmm_version":"1.16.1","app_name":"Firecracker"}`)
			})}
			mu.Unlock()
			_ = srv.Serve(ln)
		})
		defer timer.Stop()
		ctx, cancel := context.WithTimeout(t.Context(), 5*time.Second)
		defer cancel()
		if err := c.WaitReady(ctx); err != nil {
			t.Fatal(err)
		}
		c.Close()
		mu.Lock()
		_ = srv.Close()
		mu.Unlock()
		<-srvDone
	})
	t.Run("never appears", func(t *testing.T) {
		c := NewClient(filepath.Join(shortDir(t), "none.sock"))
		defer c.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 80*time.Millisecond)
		defer cancel()
		if err := c.WaitReady(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want DeadlineExceeded", err)
		}
	})
	t.Run("refused", func(t *testing.T) {
		sock := filepath.Join(shortDir(t), "refused.sock")
		ln, err := net.Listen("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		ln.(*net.UnixListener).SetUnlinkOnClose(false)
		ln.Close() // the file stays, connects are refused
		c := NewClient(sock)
		defer c.Close()
		ctx, cancel := context.WithTimeout(t.Context(), 80*time.Millisecond)
		defer cancel()
		if err := c.WaitReady(ctx); !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("err = %v, want DeadlineExceeded", err)
		}
	})
	t.Run("api error ends wait", func(t *testing.T) {
		_, sock := startFake(t, func(w http.ResponseWriter, _ *http.Request) {
			w.WriteHeader(400)
			io.WriteString(w, `{"fault_message":"nope"}`)
		})
		c := NewClient(sock)
		defer c.Close()
		if err := c.WaitReady(t.Context()); !IsAPIError(err) {
			t.Fatalf("err = %v, want APIError", err)
		}
	})
}

func TestEscapeControl(t *testing.T) {
	tests := []struct{ in, want string }{
		{`{"a":"b"}`, `{"a":"b"}`},
		{"{\"a\":\"x\ny\"}", `{"a":"x\u000ay"}`},
		{"{\n\"a\":\"x\\\"\ty\"}", "{\n\"a\":\"x\\\"\\u0009y\"}"},
	}
	for _, tt := range tests {
		if got := string(escapeControl([]byte(tt.in))); got != tt.want {
			t.Errorf("escapeControl(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}
