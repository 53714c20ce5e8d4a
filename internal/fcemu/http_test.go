package fcemu_test

import (
	"bufio"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestTooManyConnections(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{})
	var conns []net.Conn
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	for i := 0; i < 10; i++ {
		c, err := net.Dial("unix", p.sock)
		if err != nil {
			t.Fatal(err)
		}
		conns = append(conns, c)
		// Make sure the server registered it.
		_, _ = io.WriteString(c, "GET / HTTP/1.1\r\n\r\n")
		if _, err := readResp(bufio.NewReader(c)); err != nil {
			t.Fatal(err)
		}
	}
	c, err := net.Dial("unix", p.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	r, err := readResp(bufio.NewReader(c))
	if err != nil {
		t.Fatal(err)
	}
	if r.statusLine != "HTTP/1.1 503 " || r.header.Get("Connection") != "close" || r.body != `{ "error": "Too many open connections" }` {
		t.Fatalf("11th connection got %q %v %q", r.statusLine, r.header, r.body)
	}
	conns[0].Close()
	conns = conns[1:]
	time.Sleep(50 * time.Millisecond)
	p.must(200, "GET", "/", "")
}

func TestTransport(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{args: []string{"--http-api-max-payload-size", "100"}})
	tail := "\nAll previous unanswered requests will be dropped.\" }"
	big := `{"kernel_image_path":"` + strings.Repeat("x", 200) + `"}`
	tests := []struct {
		name, req string
		status    int
		body      string
	}{
		{"unsupported method", "POST /actions HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 400, `{ "error": "Invalid HTTP Method: Unsupported HTTP method.` + tail},
		{"payload too large", "PUT /boot-source HTTP/1.1\r\nContent-Length: " + strconv.Itoa(len(big)) + "\r\n\r\n" + big, 400,
			`{ "error": "Request payload with size ` + strconv.Itoa(len(big)) + ` is larger than the limit of 100 allowed by server.` + tail},
		{"chunked", "PUT /actions HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n", 400, ""},
		{"missing content-length", "PUT /actions HTTP/1.1\r\n\r\n", 400, `{"fault_message":"Empty PUT request."}`},
		{"patch without body", "PATCH /vm HTTP/1.1\r\n\r\n", 400, `{"fault_message":"Empty PATCH request."}`},
		{"get with body", "GET /machine-config HTTP/1.1\r\nContent-Length: 2\r\n\r\n{}", 400, `{"fault_message":"GET request cannot have a body."}`},
		{"http/1.0 absolute uri", "GET http://localhost/version HTTP/1.0\r\n\r\n", 200, `{"firecracker_version":"1.16.1"}`},
		{"query ignored", "GET /version?x=1 HTTP/1.1\r\n\r\n", 200, `{"firecracker_version":"1.16.1"}`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			r := p.raw(tc.req)
			if r.status != tc.status || (tc.body != "" && r.body != tc.body) {
				t.Fatalf("got %d %q, want %d %q", r.status, r.body, tc.status, tc.body)
			}
			if tc.name == "chunked" && !strings.HasPrefix(r.body, `{ "error": `) {
				t.Fatalf("chunked: body %q is not a transport error", r.body)
			}
		})
	}
}

func TestResponseFormat(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{})
	r := p.must(204, "PUT", "/logger", `{"level":"Debug"}`)
	if r.statusLine != "HTTP/1.1 204 " {
		t.Fatalf("status line %q, want empty reason phrase", r.statusLine)
	}
	if r.header.Get("Content-Length") != "" || r.header.Get("Content-Type") != "" || r.body != "" {
		t.Fatalf("204 carries a body: %v %q", r.header, r.body)
	}
	if r.header.Get("Server") != "Firecracker API" || r.header.Get("Connection") != "keep-alive" {
		t.Fatalf("headers %v", r.header)
	}
	g := p.must(200, "GET", "/", "")
	if g.statusLine != "HTTP/1.1 200 " || g.header.Get("Content-Type") != "application/json" {
		t.Fatalf("GET /: %q %v", g.statusLine, g.header)
	}
	want := `{"app_name":"Firecracker","id":"anonymous-instance","state":"Not started","vmm_version":"1.16.1"}`
	if g.body != want {
		t.Fatalf("GET / = %s, want %s", g.body, want)
	}
}

func TestKeepAliveAndExpectContinue(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{})
	c, err := net.Dial("unix", p.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	br := bufio.NewReader(c)
	body := `{"vcpu_count":2,"mem_size_mib":256}`
	_, _ = io.WriteString(c, "PUT /machine-config HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: "+strconv.Itoa(len(body))+"\r\n\r\n")
	r, err := readResp(br)
	if err != nil || r.status != 100 {
		t.Fatalf("want 100 continue, got %v %v", r.statusLine, err)
	}
	_, _ = io.WriteString(c, body)
	if r, err = readResp(br); err != nil || r.status != 204 {
		t.Fatalf("PUT after continue: %v %v", r.statusLine, err)
	}
	_, _ = io.WriteString(c, "GET /machine-config HTTP/1.1\r\n\r\n")
	if r, err = readResp(br); err != nil || !strings.Contains(r.body, `"vcpu_count":2`) {
		t.Fatalf("second request on same connection: %q %v", r.body, err)
	}
}

func TestDeprecationHeader(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{env: []string{"FCEMU_SKIP_TAP=1"}})
	tests := []struct {
		method, path, body string
		dep                bool
	}{
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128,"cpu_template":"None"}`, true},
		{"PUT", "/machine-config", `{"vcpu_count":1,"mem_size_mib":128}`, false},
		{"PUT", "/vsock", `{"guest_cid":3,"uds_path":"` + p.dir + `/v1.sock","vsock_id":"v"}`, true},
		{"PUT", "/vsock", `{"guest_cid":3,"uds_path":"` + p.dir + `/v2.sock"}`, false},
		{"PUT", "/network-interfaces/eth0", `{"iface_id":"eth0","host_dev_name":"tap0"}`, false},
		{"PUT", "/mmds/config", `{"network_interfaces":["eth0"]}`, true},
		{"PUT", "/mmds/config", `{"network_interfaces":["eth0"],"version":"V2"}`, false},
	}
	for _, tc := range tests {
		r := p.must(204, tc.method, tc.path, tc.body)
		if got := r.header.Get("Deprecation") == "true"; got != tc.dep {
			t.Errorf("%s %s %s: Deprecation %v, want %v", tc.method, tc.path, tc.body, got, tc.dep)
		}
	}
}
