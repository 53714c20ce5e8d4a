package fcemu

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
)

// maxConnections is micro-http's limit of simultaneous API connections.
const maxConnections = 10

// request is one parsed HTTP request.
type request struct {
	method  string
	path    string
	body    []byte
	hasBody bool
}

// response is what the API answers; after runs once the bytes are written.
type response struct {
	status      int
	body        []byte
	deprecation bool
	after       func()
}

// transportError is a micro-http level failure, answered with the
// { "error": ... } body shape and followed by closing the connection.
type transportError string

func (e transportError) Error() string { return string(e) }

// httpServer is a tiny HTTP/1.x server reproducing micro-http's quirks.
type httpServer struct {
	ln         *net.UnixListener
	handler    func(*request) *response
	maxPayload int

	// mu guards the fields that follow.
	mu    sync.Mutex
	conns map[net.Conn]struct{}

	wg sync.WaitGroup
}

func newHTTPServer(ln *net.UnixListener, maxPayload int, h func(*request) *response) *httpServer {
	return &httpServer{ln: ln, handler: h, maxPayload: maxPayload, conns: map[net.Conn]struct{}{}}
}

// serve accepts connections until ctx ends or the listener fails; it closes
// the listener (without unlinking the socket) and waits for its connections.
func (s *httpServer) serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.ln.Close() })
	defer stop()
	defer s.wg.Wait()
	defer s.closeConns()
	for {
		c, err := s.ln.Accept()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				return nil
			}
			return fmt.Errorf("accept: %w", err)
		}
		s.mu.Lock()
		if len(s.conns) >= maxConnections {
			s.mu.Unlock()
			body := `{ "error": "Too many open connections" }`
			_, _ = io.WriteString(c, "HTTP/1.1 503 \r\nServer: Firecracker API\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: "+
				strconv.Itoa(len(body))+"\r\n\r\n"+body)
			c.Close()
			continue
		}
		s.conns[c] = struct{}{}
		s.mu.Unlock()
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handleConn(c)
		}()
	}
}

func (s *httpServer) closeConns() {
	s.mu.Lock()
	defer s.mu.Unlock()
	for c := range s.conns {
		c.Close()
	}
}

func (s *httpServer) handleConn(c net.Conn) {
	defer func() {
		s.mu.Lock()
		delete(s.conns, c)
		s.mu.Unlock()
		c.Close()
	}()
	br := bufio.NewReader(c)
	for {
		req, keepAlive, err := readRequest(br, c, s.maxPayload)
		if err != nil {
			var te transportError
			if errors.As(err, &te) {
				body := fmt.Sprintf("{ \"error\": \"%s\nAll previous unanswered requests will be dropped.\" }", string(te))
				_ = writeResponse(c, &response{status: 400, body: []byte(body)})
			}
			return
		}
		resp := s.handler(req)
		if resp == nil {
			// An injected exit or hang: the request is never answered.
			return
		}
		if err := writeResponse(c, resp); err != nil {
			return
		}
		if resp.after != nil {
			resp.after()
		}
		if !keepAlive {
			return
		}
	}
}

// readRequest parses one request. io errors end the connection silently.
func readRequest(br *bufio.Reader, w io.Writer, maxPayload int) (*request, bool, error) {
	var line string
	for line == "" {
		l, err := br.ReadString('\n')
		if err != nil {
			return nil, false, fmt.Errorf("read request line: %w", err)
		}
		line = strings.TrimRight(l, "\r\n")
	}
	parts := strings.Split(line, " ")
	if len(parts) != 3 {
		return nil, false, transportError("Invalid request.")
	}
	req := &request{method: parts[0]}
	switch req.method {
	case "GET", "PUT", "PATCH", "DELETE":
	default:
		return nil, false, transportError("Invalid HTTP Method: Unsupported HTTP method.")
	}
	uri := parts[1]
	if strings.HasPrefix(uri, "http://") {
		rest := uri[len("http://"):]
		i := strings.IndexByte(rest, '/')
		if i < 0 {
			return nil, false, transportError("Invalid URI: Unsupported URI.")
		}
		uri = rest[i:]
	}
	if !strings.HasPrefix(uri, "/") {
		return nil, false, transportError("Invalid URI: Unsupported URI.")
	}
	if i := strings.IndexByte(uri, '?'); i >= 0 {
		uri = uri[:i]
	}
	req.path = uri
	keepAlive := true
	switch parts[2] {
	case "HTTP/1.1":
	case "HTTP/1.0":
		keepAlive = false
	default:
		return nil, false, transportError("Invalid HTTP Version: Unsupported HTTP version.")
	}
	contentLength := -1
	expectContinue := false
	chunked := false
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			return nil, false, fmt.Errorf("read header: %w", err)
		}
		l = strings.TrimRight(l, "\r\n")
		if l == "" {
			break
		}
		name, value, ok := strings.Cut(l, ":")
		if !ok {
			return nil, false, transportError("Invalid header. Reason: Invalid header line.")
		}
		value = strings.TrimSpace(value)
		switch strings.ToLower(strings.TrimSpace(name)) {
		case "content-length":
			n, err := strconv.Atoi(value)
			if err != nil || n < 0 {
				return nil, false, transportError("Invalid header. Reason: Invalid value. Key:Content-Length; Value: " + value)
			}
			contentLength = n
		case "transfer-encoding":
			if strings.EqualFold(value, "chunked") {
				chunked = true
			}
		case "expect":
			if strings.EqualFold(value, "100-continue") {
				expectContinue = true
			}
		case "connection":
			switch strings.ToLower(value) {
			case "close":
				keepAlive = false
			case "keep-alive":
				keepAlive = true
			}
		}
	}
	if chunked {
		return nil, false, transportError("Invalid header. Reason: Unsupported header value. Key:Transfer-Encoding; Value: chunked")
	}
	if contentLength > maxPayload {
		return nil, false, transportError(fmt.Sprintf("Request payload with size %d is larger than the limit of %d allowed by server.", contentLength, maxPayload))
	}
	if contentLength > 0 {
		if expectContinue {
			if _, err := io.WriteString(w, "HTTP/1.1 100 \r\n\r\n"); err != nil {
				return nil, false, fmt.Errorf("write 100-continue: %w", err)
			}
		}
		req.body = make([]byte, contentLength)
		if _, err := io.ReadFull(br, req.body); err != nil {
			return nil, false, fmt.Errorf("read body: %w", err)
		}
		req.hasBody = true
	}
	return req, keepAlive, nil
}

func writeResponse(w io.Writer, r *response) error {
	var b strings.Builder
	fmt.Fprintf(&b, "HTTP/1.1 %d \r\nServer: Firecracker API\r\nConnection: keep-alive\r\n", r.status)
	if r.deprecation {
		b.WriteString("Deprecation: true\r\n")
	}
	if len(r.body) > 0 {
		fmt.Fprintf(&b, "Content-Type: application/json\r\nContent-Length: %d\r\n", len(r.body))
	}
	b.WriteString("\r\n")
	b.Write(r.body)
	if _, err := io.WriteString(w, b.String()); err != nil {
		return fmt.Errorf("write response: %w", err)
	}
	return nil
}
