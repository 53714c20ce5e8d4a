package fcemu

import (
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Log levels, ordered like Rust's log::LevelFilter.
const (
	levelOff = iota
	levelError
	levelWarn
	levelInfo
	levelDebug
	levelTrace
)

var levelNames = [...]string{"OFF", "ERROR", "WARN", "INFO", "DEBUG", "TRACE"}

// parseLevel accepts Firecracker's level names, case-insensitively.
func parseLevel(s string) (int, bool) {
	switch strings.ToLower(s) {
	case "off":
		return levelOff, true
	case "error":
		return levelError, true
	case "warn", "warning":
		return levelWarn, true
	case "info":
		return levelInfo, true
	case "debug":
		return levelDebug, true
	case "trace":
		return levelTrace, true
	}
	return 0, false
}

// logger writes Firecracker-shaped log lines:
// "<timestamp> [<id>:<thread>(:<LEVEL>)(:<file>:<line>)] <message>".
type logger struct {
	// mu guards the fields that follow.
	mu         sync.Mutex
	id         string
	out        io.Writer
	file       *os.File
	level      int
	showLevel  bool
	showOrigin bool
	module     string
}

func newLogger(id string, out io.Writer) *logger {
	return &logger{id: id, out: out, level: levelInfo}
}

// openAppendless opens path the way Firecracker opens log, metrics and
// serial files: O_RDWR|O_CREAT|O_NONBLOCK, no O_TRUNC, no O_APPEND.
func openAppendless(path string) (*os.File, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE|syscall.O_NONBLOCK|syscall.O_CLOEXEC, 0o644)
	if err != nil {
		return nil, fmt.Errorf("open %s: %w", path, err)
	}
	return f, nil
}

func (l *logger) setPath(path string) error {
	f, err := openAppendless(path)
	if err != nil {
		return err
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file != nil {
		l.file.Close()
	}
	l.file = f
	l.out = f
	return nil
}

func (l *logger) logf(level int, thread, origin, format string, a ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if level > l.level || level == levelOff {
		return
	}
	if l.module != "" && !strings.HasPrefix(origin, l.module) {
		return
	}
	var b strings.Builder
	b.WriteString(time.Now().Format("2006-01-02T15:04:05.000000000"))
	b.WriteString(" [")
	b.WriteString(l.id)
	b.WriteString(":")
	b.WriteString(thread)
	if l.showLevel {
		b.WriteString(":")
		b.WriteString(levelNames[level])
	}
	if l.showOrigin {
		b.WriteString(":")
		b.WriteString(origin)
	}
	b.WriteString("] ")
	fmt.Fprintf(&b, format, a...)
	b.WriteString("\n")
	_, _ = io.WriteString(l.out, b.String())
}

// Info logs from the VMM main thread.
func (l *logger) info(format string, a ...any) {
	l.logf(levelInfo, "main", "vmm/src/lib.rs:1", format, a...)
}

// api logs from the API server thread.
func (l *logger) api(format string, a ...any) {
	l.logf(levelInfo, "fc_api", "api_server/src/lib.rs:1", format, a...)
}

func (l *logger) warn(format string, a ...any) {
	l.logf(levelWarn, "main", "vmm/src/lib.rs:1", format, a...)
}
