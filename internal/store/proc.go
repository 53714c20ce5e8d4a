package store

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"strconv"

	"github.com/firecracker-vmm/firecracker-vmm/internal/errdefs"
)

// ProcessStartTime returns a process's start time: field 22 of
// /proc/<pid>/stat, in clock ticks since boot. Together with the pid it
// identifies a process across pid reuse. A process that does not exist is
// an error of class errdefs.ErrNotFound.
func ProcessStartTime(pid int) (uint64, error) {
	if pid <= 0 {
		return 0, fmt.Errorf("process start time of pid %d: %w", pid, errdefs.ErrInvalidArgument)
	}
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
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
