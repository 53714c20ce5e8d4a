// Package bench measures create→READY latency and throughput of vmm-daemon
// against a baseline measured in the same run: the same Firecracker (or
// emulator) processes started and configured directly through internal/vmm,
// with no daemon. cmd/vmm-bench is its command-line front end.
package bench

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Options configure a run.
type Options struct {
	// Daemon is the vmm-daemon binary. Required.
	Daemon string
	// Firecracker is the firecracker (or emulator) binary. Required.
	Firecracker string
	// Env is extra environment for every Firecracker process, in both the
	// baseline and the daemon run (e.g. FCEMU_BOOT_DELAY_MS=100).
	Env []string
	// N is the number of sandboxes created per run.
	N int
	// Concurrency is how many creates are in flight at once.
	Concurrency int
	// MemoryMiB and VCPUs size every microVM.
	MemoryMiB int
	VCPUs     int
	// RootfsMiB is the size of the (sparse) rootfs image.
	RootfsMiB int
	// Dir is a scratch directory (default: a new one under /tmp).
	Dir string
	// Log receives progress lines (may be nil).
	Log io.Writer
	// Network adds a third series: the daemon with networking on (needs
	// root). The daemon then runs in a network namespace the benchmark
	// creates and deletes, which plays the host's.
	Network bool
	// Snapshots, when > 0, checkpoints one sandbox of the daemon series
	// that many times and restores that many new sandboxes from the last
	// checkpoint, measuring the pause, the checkpoint call and
	// restore→READY.
	Snapshots int
}

// Run measures the baseline and the daemon (and the daemon with
// networking) with the same options. The series are interleaved: the N
// creates of each are made in rounds, and every round runs a chunk of each
// series (in rotating order), so that drift in the machine's speed during
// the run affects all series alike. A series' throughput is its creates
// over the sum of its chunks' wall time.
func Run(ctx context.Context, o Options) (Result, error) {
	if o.N <= 0 || o.Concurrency <= 0 {
		return Result{}, errors.New("bench: N and Concurrency must be > 0")
	}
	if o.Dir == "" {
		dir, err := os.MkdirTemp("/tmp", "vmm-bench-")
		if err != nil {
			return Result{}, err
		}
		defer os.RemoveAll(dir)
		o.Dir = dir
	}
	if err := prepareImages(o); err != nil {
		return Result{}, err
	}
	base := newBaseline(o)
	defer base.close(ctx)
	dmn, err := startDaemon(ctx, o, "daemon", "")
	if err != nil {
		return Result{}, fmt.Errorf("daemon: %w", err)
	}
	defer dmn.close(ctx)
	all := []series{base, dmn}
	if o.Network {
		net, cleanup, err := startNetworked(ctx, o)
		if err != nil {
			return Result{}, fmt.Errorf("daemon with network: %w", err)
		}
		defer cleanup()
		defer net.close(ctx)
		all = append(all, net)
	}
	stats, err := interleave(ctx, o, all)
	if err != nil {
		return Result{}, err
	}
	r := Result{Baseline: stats[0], Daemon: stats[1]}
	if o.Network {
		r.Network = stats[2]
	}
	if o.Snapshots > 0 {
		if err := dmn.snapshots(ctx, o, &r); err != nil {
			return Result{}, fmt.Errorf("snapshots: %w", err)
		}
	}
	return r, nil
}

// series is one way of creating microVMs that Run measures.
type series interface {
	// name names the series in the report.
	name() string
	// create makes microVM i (0 <= i < N) and returns once it is ready.
	create(ctx context.Context, i int) error
}

// interleave runs o.N creates of every series in rounds and summarises
// each series.
func interleave(ctx context.Context, o Options, all []series) ([]Stats, error) {
	chunk := max(4*o.Concurrency, 10)
	lat := make([][]time.Duration, len(all))
	wall := make([]time.Duration, len(all))
	for round, off := 0, 0; off < o.N; round, off = round+1, off+chunk {
		n := min(chunk, o.N-off)
		for k := range all {
			idx := (round + k) % len(all)
			s := all[idx]
			l, w, err := parallel(ctx, n, o.Concurrency, func(ctx context.Context, j int) error { return s.create(ctx, off+j) })
			if err != nil {
				return nil, fmt.Errorf("%s: %w", s.name(), err)
			}
			lat[idx] = append(lat[idx], l...)
			wall[idx] += w
		}
	}
	out := make([]Stats, len(all))
	for i, s := range all {
		out[i] = Summarize(s.name(), lat[i], wall[i])
	}
	return out, nil
}

func (o Options) kernel() string { return filepath.Join(o.Dir, "data", "kernels", "vmlinux") }
func (o Options) rootfs() string { return filepath.Join(o.Dir, "data", "images", "rootfs.ext4") }

// bootArgs is the kernel command line of both series: the daemon's
// default (sandbox.DefaultBootArgs, which a test keeps it equal to; the
// bench does not link the daemon's packages).
const bootArgs = "console=ttyS0 reboot=k panic=1 pci=off"

func prepareImages(o Options) error {
	for _, d := range []string{filepath.Dir(o.kernel()), filepath.Dir(o.rootfs())} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return err
		}
	}
	if err := os.WriteFile(o.kernel(), []byte("bench kernel\n"), 0o644); err != nil {
		return err
	}
	f, err := os.Create(o.rootfs())
	if err != nil {
		return err
	}
	defer f.Close()
	if _, err := f.Write([]byte("bench rootfs\n")); err != nil {
		return err
	}
	return f.Truncate(int64(o.RootfsMiB) << 20)
}

func (o Options) logf(format string, args ...any) {
	if o.Log != nil {
		fmt.Fprintf(o.Log, format+"\n", args...)
	}
}

// parallel runs fn(i) for i in [0,n) with c workers and returns each call's
// latency and the wall time.
func parallel(ctx context.Context, n, c int, fn func(ctx context.Context, i int) error) ([]time.Duration, time.Duration, error) {
	lat := make([]time.Duration, n)
	errs := make([]error, n)
	next := make(chan int)
	var wg sync.WaitGroup
	start := time.Now()
	for range c {
		wg.Go(func() {
			for i := range next {
				t0 := time.Now()
				errs[i] = fn(ctx, i)
				lat[i] = time.Since(t0)
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return lat, time.Since(start), errors.Join(errs...)
}
