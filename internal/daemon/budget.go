package daemon

import (
	"bufio"
	"os"
	"runtime"
	"strconv"
	"strings"
)

// How the host-wide budget ([limits] max_total_vcpus and
// max_total_memory_mib) is derived when the file leaves it 0.
const (
	// VCPUOvercommit is the vCPUs allowed per host CPU. A vCPU is a
	// thread that costs little while the guest idles, so CPUs are
	// overcommitted, by OpenStack Nova's long-standing default ratio.
	VCPUOvercommit = 16
	// MemoryReserveMiB is the least host memory kept out of the budget
	// (for the host, the daemon and each VMM's own overhead); a tenth of
	// MemTotal is kept when that is more, and never more than half of it
	// (a small host). Guest memory is not overcommitted: a guest may
	// touch all of it.
	MemoryReserveMiB = 1024
)

// meminfoPath is where the host's memory size is read.
const meminfoPath = "/proc/meminfo"

// HostBudget returns [limits] max_total_vcpus and max_total_memory_mib,
// each 0 in the file derived from the host: VCPUOvercommit × the CPUs
// the daemon may run on, and MemTotal minus the reserve
// (MemoryReserveMiB or a tenth of it, whichever is more, at most half). A memory size that cannot be read
// leaves the memory budget unlimited (0).
func (c Config) HostBudget() (vcpus, memoryMiB int) {
	return deriveBudget(c.Limits.MaxTotalVCPUs, c.Limits.MaxTotalMemoryMiB, runtime.NumCPU(), memTotalMiB(meminfoPath))
}

// deriveBudget fills in a 0 vcpus or memoryMiB from cpus and the host's
// memTotal (MiB; 0 when unknown).
func deriveBudget(vcpus, memoryMiB, cpus, memTotal int) (int, int) {
	if vcpus == 0 {
		vcpus = VCPUOvercommit * max(cpus, 1)
	}
	if memoryMiB == 0 && memTotal > 0 {
		reserve := min(max(MemoryReserveMiB, memTotal/10), memTotal/2)
		memoryMiB = max(memTotal-reserve, 1)
	}
	return vcpus, memoryMiB
}

// memTotalMiB returns the MemTotal line of a meminfo file in MiB, or 0.
func memTotalMiB(path string) int {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:")
		if !ok {
			continue
		}
		fields := strings.Fields(rest)
		if len(fields) != 2 || fields[1] != "kB" {
			return 0
		}
		kb, err := strconv.Atoi(fields[0])
		if err != nil || kb < 0 {
			return 0
		}
		return kb / 1024
	}
	return 0
}
