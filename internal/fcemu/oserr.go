package fcemu

import (
	"errors"
	"fmt"
	"strings"
	"syscall"
)

// muslMessages are the strerror texts of musl libc, which Firecracker links
// against, so io errors read exactly as on a real host.
var muslMessages = map[syscall.Errno]string{
	syscall.EPERM:        "Operation not permitted",
	syscall.ENOENT:       "No such file or directory",
	syscall.EIO:          "I/O error",
	syscall.ENXIO:        "No such device or address",
	syscall.EBADF:        "Bad file descriptor",
	syscall.EACCES:       "Permission denied",
	syscall.EBUSY:        "Resource busy",
	syscall.EEXIST:       "File exists",
	syscall.ENODEV:       "No such device",
	syscall.ENOTDIR:      "Not a directory",
	syscall.EISDIR:       "Is a directory",
	syscall.EINVAL:       "Invalid argument",
	syscall.ENOSPC:       "No space left on device",
	syscall.EROFS:        "Read-only file system",
	syscall.ENAMETOOLONG: "Filename too long",
	syscall.ENOTSOCK:     "Not a socket",
	syscall.EADDRINUSE:   "Address in use",
	syscall.ECONNREFUSED: "Connection refused",
	syscall.ELOOP:        "Symbolic link loop",
	syscall.ENOTTY:       "Not a tty",
}

// rustIOError renders err like Rust's io::Error Display on musl:
// "No such file or directory (os error 2)".
func rustIOError(err error) string {
	var errno syscall.Errno
	if errors.As(err, &errno) {
		msg, ok := muslMessages[errno]
		if !ok {
			s := errno.Error()
			if s != "" {
				msg = strings.ToUpper(s[:1]) + s[1:]
			}
		}
		return fmt.Sprintf("%s (os error %d)", msg, int(errno))
	}
	return err.Error()
}

// apiError is an application-level failure answered with fault_message.
type apiError struct {
	status int
	msg    string
}

func (e *apiError) Error() string { return e.msg }

func badRequest(format string, a ...any) *apiError {
	return &apiError{status: 400, msg: fmt.Sprintf(format, a...)}
}

const (
	msgNotAfterStart  = "The requested operation is not supported after starting the microVM."
	msgNotBeforeStart = "The requested operation is not supported before starting the microVM."
	msgLoadNotAllowed = "Load snapshot error: Loading a microVM snapshot not allowed after configuring boot-specific resources."
	msgCreateRunning  = "Create snapshot error: Cannot save the microVM state: Operation not allowed: save/restore unavailable while running"
	msgEmptyID        = "The ID cannot be empty."
	msgBadIDChars     = "API Resource IDs can only contain alphanumeric characters and underscores."
	msgIDMismatch     = "The id from the path does not match the id from the body!"
	msgMmdsNotInit    = "MMDS error: The MMDS data store is not initialized."
	msgNoKernel       = "Start microvm error: Cannot start microvm without kernel configuration."
	msgNoBalloon      = "Balloon config error: No balloon device found."
)
