package fcemu

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
)

// FuzzReadRequest feeds arbitrary bytes to the API's HTTP request parser:
// it never panics, a refusal is a transportError (answered 400) or a read
// error (the connection ends), and an accepted request has a supported
// method, a path without its query, a body within the limit, and reads
// back the same when written out again.
func FuzzReadRequest(f *testing.F) {
	for _, s := range []string{
		"PUT /boot-source HTTP/1.1\r\nContent-Type: application/json\r\nContent-Length: 36\r\n\r\n{\"kernel_image_path\":\"/k/vmlinux\"}\n\n",
		"GET / HTTP/1.1\r\n\r\n",
		"GET http://localhost/machine-config?x=1 HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
		"PATCH /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 19\r\n\r\n{\"state\":\"Paused\"}\n",
		"POST / HTTP/1.1\r\n\r\n",
		"GET / HTTP/2\r\n\r\n",
		"GET noslash HTTP/1.1\r\n\r\n",
		"PUT /drives/x HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
		"PUT /drives/x HTTP/1.1\r\nContent-Length: 99999999999999999999\r\n\r\n",
		"PUT /drives/x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"PUT /drives/x HTTP/1.1\r\nbadheader\r\n\r\n",
		"PUT /drives/x HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort",
		"\r\n\r\nGET / HTTP/1.1\r\n\r\n",
		"",
	} {
		f.Add([]byte(s), uint16(1024))
	}
	f.Fuzz(func(t *testing.T, raw []byte, maxPayload uint16) {
		req, _, err := readRequest(bufio.NewReader(bytes.NewReader(raw)), io.Discard, int(maxPayload))
		if err != nil {
			var te transportError
			if !errors.As(err, &te) && !strings.HasPrefix(err.Error(), "read ") && !strings.HasPrefix(err.Error(), "write ") {
				t.Fatalf("refusal %v is neither a transport nor an io error", err)
			}
			return
		}
		switch {
		case req.method != "GET" && req.method != "PUT" && req.method != "PATCH" && req.method != "DELETE":
			t.Fatalf("accepted method %q", req.method)
		case !strings.HasPrefix(req.path, "/") || strings.ContainsAny(req.path, "? "):
			t.Fatalf("accepted path %q", req.path)
		case len(req.body) > int(maxPayload) || req.hasBody != (len(req.body) > 0):
			t.Fatalf("body of %d bytes (has %v), limit %d", len(req.body), req.hasBody, maxPayload)
		}
		out := fmt.Sprintf("%s %s HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s", req.method, req.path, len(req.body), req.body)
		again, _, err := readRequest(bufio.NewReader(strings.NewReader(out)), io.Discard, int(maxPayload))
		if err != nil || again.method != req.method || again.path != req.path || !bytes.Equal(again.body, req.body) {
			t.Fatalf("written out again %q reads as %+v, %v; want %+v", out, again, err, req)
		}
	})
}

// fuzzSchemas are the request bodies the API validates, by index.
var fuzzSchemas = []*schema{sAction, sBoot, sMachine, sMachineP, sDrive, sDriveP, sNet, sVsock, sBalloon, sMmdsConf, sEntropy, sCPUConf}

// FuzzDecodeStrict feeds arbitrary bodies to the schema validation every
// API handler runs first: it never panics, a refusal is a serde-style
// jsonError, and an accepted body is one JSON value that, encoded again,
// is accepted again.
func FuzzDecodeStrict(f *testing.F) {
	for i, s := range []string{
		`{"action_type":"InstanceStart"}`,
		`{"kernel_image_path":"/k/vmlinux","boot_args":"console=ttyS0"}`,
		`{"vcpu_count":2,"mem_size_mib":512,"smt":false}`,
		`{"vcpu_count":256}`,
		`{"drive_id":"rootfs","path_on_host":"/i/r.ext4","is_root_device":true,"is_read_only":false}`,
		`{"drive_id":"rootfs","path_on_host":"/x"}`,
		`{"iface_id":"eth0","host_dev_name":"tap0","guest_mac":"06:00:ac:10:00:02"}`,
		`{"guest_cid":4294967296,"uds_path":"/v.sock"}`,
		`{"amount_mib":1,"deflate_on_oom":true}`,
		`{"network_interfaces":["eth0"],"version":"V3"}`,
		`{"rate_limiter":{"bandwidth":{"size":1,"refill_time":1}}}`,
		`{"kvm_capabilities":[]}`,
	} {
		f.Add([]byte(s), uint8(i))
	}
	for _, s := range []string{``, `{`, `null`, `[]`, `{"action_type":1}`, `{"a":1} {}`, `{"vcpu_count":1.5,"mem_size_mib":1}`, "\xff"} {
		f.Add([]byte(s), uint8(2))
	}
	f.Fuzz(func(t *testing.T, body []byte, which uint8) {
		s := fuzzSchemas[int(which)%len(fuzzSchemas)]
		var v any
		err := decodeStrict(body, s, &v)
		if err != nil {
			var je *jsonError
			if !errors.As(err, &je) {
				t.Fatalf("refusal %v is not a jsonError", err)
			}
			return
		}
		if !json.Valid(body) {
			t.Fatalf("accepted invalid JSON %q", body)
		}
		dec := json.NewDecoder(bytes.NewReader(body))
		dec.UseNumber()
		var n any
		if err := dec.Decode(&n); err != nil {
			t.Fatal(err)
		}
		again, err := json.Marshal(n)
		if err != nil {
			t.Fatal(err)
		}
		if err := decodeStrict(again, s, nil); err != nil {
			t.Fatalf("accepted %q, but not its re-encoding %q: %v", body, again, err)
		}
	})
}
