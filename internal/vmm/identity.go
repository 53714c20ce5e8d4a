package vmm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

// A VMM is identified across daemon restarts by what /proc says about it:
// its pid together with the process's start time (which tells a recycled
// pid apart), the "--id <id>" pair on its command line, and its working
// directory (Firecracker, and the jailer before it execs Firecracker, runs
// in the sandbox's directory or in its jail's root), so that a VMM can be
// found even when no record of its pid survived.

// procDir is where the process file system is mounted.
const procDir = "/proc"

// ProcessStartTime returns a process's start time: field 22 of
// /proc/<pid>/stat, in clock ticks since boot. Together with the pid it
// identifies a process across pid reuse. A process that does not exist is
// an error of class errdefs.ErrNotFound.
func ProcessStartTime(pid int) (uint64, error) {
	if pid <= 0 {
		return 0, fmt.Errorf("process start time of pid %d: %w", pid, errdefs.ErrInvalidArgument)
	}
	data, err := os.ReadFile(procDir + "/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, fmt.Errorf("process %d: %w: %w", pid, errdefs.ErrNotFound, err)
		}
		return 0, fmt.Errorf("process %d: %w", pid, err)
	}
	return parseStartTime(data)
}

// parseStartTime extracts field 22 from a /proc/<pid>/stat line. The comm
// field (2) is in parentheses and may itself contain spaces and ')', so
// fields are counted from after the last ')'.
func parseStartTime(stat []byte) (uint64, error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, fmt.Errorf("parse /proc stat: no ')' in %q", stat)
	}
	// After ')' come fields 3 (state), 4, ...; field 22 is the 20th.
	fields := bytes.Fields(stat[i+1:])
	const idx = 22 - 3
	if len(fields) <= idx {
		return 0, fmt.Errorf("parse /proc stat: %d fields after comm, want > %d", len(fields), idx)
	}
	v, err := strconv.ParseUint(string(fields[idx]), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("parse /proc stat starttime %q: %w", fields[idx], err)
	}
	return v, nil
}

// Cwd returns the working directory of process pid as seen from this
// process's root.
func Cwd(pid int) (string, error) {
	return os.Readlink(procDir + "/" + strconv.Itoa(pid) + "/cwd")
}

// FindByCwd returns the pids of the processes for which match(pid, their
// working directory) holds. Processes that end during the scan, or whose
// working directory cannot be read (zombies, kernel threads), are skipped.
func FindByCwd(match func(pid int, cwd string) bool) ([]int, error) {
	entries, err := os.ReadDir(procDir)
	if err != nil {
		return nil, fmt.Errorf("vmm: listing processes: %w", err)
	}
	self := os.Getpid()
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil || pid == self {
			continue
		}
		if cwd, err := Cwd(pid); err == nil && match(pid, cwd) {
			pids = append(pids, pid)
		}
	}
	return pids, nil
}

// HasInstanceID reports whether process pid's command line carries the
// pair "--id id", as Firecracker's and the jailer's do: a process merely
// working in a sandbox's directory (an operator's shell, say) does not.
func HasInstanceID(pid int, id string) bool {
	data, err := os.ReadFile(procDir + "/" + strconv.Itoa(pid) + "/cmdline")
	if err != nil {
		return false
	}
	args := strings.Split(strings.TrimSuffix(string(data), "\x00"), "\x00")
	for i := 0; i+1 < len(args); i++ {
		if args[i] == "--id" && args[i+1] == id {
			return true
		}
	}
	return false
}
