package firecracker

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// APIError is returned when Firecracker answers a request with a non-2xx
// status. FaultMessage holds Firecracker's explanation, taken from the
// application error body {"fault_message": …} or from the transport error
// body {"error": …} that Firecracker's HTTP layer produces.
type APIError struct {
	// Method is the HTTP method of the failed request.
	Method string
	// Path is the request path, e.g. "/boot-source".
	Path string
	// StatusCode is the HTTP status, usually 400.
	StatusCode int
	// FaultMessage is Firecracker's message (possibly empty).
	FaultMessage string
}

// Error returns a message with the request, the status and the fault message.
func (e *APIError) Error() string {
	msg := e.FaultMessage
	if msg == "" {
		msg = http.StatusText(e.StatusCode)
	}
	return fmt.Sprintf("firecracker %s %s: status %d: %s", e.Method, e.Path, e.StatusCode, msg)
}

// IsAPIError reports whether err (or an error it wraps) is an *APIError.
func IsAPIError(err error) bool {
	var apiErr *APIError
	return errors.As(err, &apiErr)
}

// FaultMessage returns the Firecracker fault message carried by err, or ""
// when err does not wrap an *APIError.
func FaultMessage(err error) string {
	var apiErr *APIError
	if errors.As(err, &apiErr) {
		return apiErr.FaultMessage
	}
	return ""
}

// decodeFault extracts the message of an error body. Firecracker's
// transport errors embed a raw newline in a JSON string, which strict JSON
// rejects, so control characters are escaped before decoding and a plain
// text body is returned as is.
func decodeFault(body []byte) string {
	var shape struct {
		FaultMessage *string `json:"fault_message"`
		Error        *string `json:"error"`
	}
	if err := json.Unmarshal(escapeControl(body), &shape); err == nil {
		switch {
		case shape.FaultMessage != nil:
			return *shape.FaultMessage
		case shape.Error != nil:
			return *shape.Error
		}
	}
	return strings.TrimSpace(string(body))
}

// escapeControl escapes ASCII control characters that appear inside JSON
// strings so that a lenient body still decodes.
func escapeControl(b []byte) []byte {
	var out []byte
	inString, escaped := false, false
	for i, c := range b {
		if inString {
			switch {
			case escaped:
				escaped = false
			case c == '\\':
				escaped = true
			case c == '"':
				inString = false
			case c < 0x20:
				if out == nil {
					out = append(make([]byte, 0, len(b)+8), b[:i]...)
				}
				out = append(out, fmt.Sprintf(`\u%04x`, c)...)
				continue
			}
		} else if c == '"' {
			inString = true
		}
		if out != nil {
			out = append(out, c)
		}
	}
	if out == nil {
		return b
	}
	return out
}
