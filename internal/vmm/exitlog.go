package vmm

import (
	"io"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// The last line Firecracker's main() logs before the process exits
// (src/firecracker/src/main.rs): at level Info after a clean stop, at
// level Error with the exit code otherwise. A process ended by a signal,
// or by one of Firecracker's fatal signal handlers, logs neither.
const (
	exitLineOK    = "Firecracker exiting successfully. exit_code=0"
	exitLineError = "Firecracker exiting with error. exit_code="
)

// exitLogTailBytes bounds how much of a log exitCodeFromLog reads: the
// exit line is among the last ones written.
const exitLogTailBytes = 4096

// exitCodeFromLog looks for Firecracker's exit line of instance id in the
// last exitLogTailBytes of the log at path and returns the code of the
// last one found. Anything but a regular file (a FIFO, a missing file) is
// not read.
func exitCodeFromLog(path, id string) (int, bool) {
	fi, err := os.Lstat(path)
	if err != nil || !fi.Mode().IsRegular() {
		return 0, false
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		return 0, false
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return 0, false
	}
	off := max(st.Size()-exitLogTailBytes, 0)
	buf := make([]byte, st.Size()-off)
	n, err := f.ReadAt(buf, off)
	if err != nil && err != io.EOF {
		return 0, false
	}
	tail := string(buf[:n])
	if off > 0 {
		// The first line is cut off.
		_, tail, _ = strings.Cut(tail, "\n")
	}
	lines := strings.Split(tail, "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if code, ok := parseExitLine(lines[i], id); ok {
			return code, true
		}
	}
	return 0, false
}

// parseExitLine parses one of Firecracker's exit lines of instance id:
// "<time> [<id>:<thread>(:<level>)(:<origin>)] <message>".
func parseExitLine(line, id string) (int, bool) {
	head, msg, ok := strings.Cut(strings.TrimRight(line, "\r"), "] ")
	if !ok || !strings.Contains(head, " ["+id+":") {
		return 0, false
	}
	if msg == exitLineOK {
		return 0, true
	}
	rest, ok := strings.CutPrefix(msg, exitLineError)
	if !ok {
		return 0, false
	}
	code, err := strconv.Atoi(rest)
	if err != nil || code < 1 || code > 255 {
		return 0, false
	}
	return code, true
}
