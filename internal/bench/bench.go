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
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/durationpb"

	sandboxv1 "github.com/firecracker-vmm/firecracker-vmm/api/sandbox/v1"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
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

// Stats summarises one series of create→READY latencies.
type Stats struct {
	Name       string
	N          int
	P50        time.Duration
	P90        time.Duration
	P99        time.Duration
	Mean       time.Duration
	Max        time.Duration
	Wall       time.Duration
	Throughput float64 // sandboxes per second over the wall time
}

// Summarize computes Stats from raw latencies.
func Summarize(name string, lat []time.Duration, wall time.Duration) Stats {
	s := Stats{Name: name, N: len(lat), Wall: wall}
	if len(lat) == 0 {
		return s
	}
	sorted := slices.Clone(lat)
	slices.Sort(sorted)
	var sum time.Duration
	for _, d := range sorted {
		sum += d
	}
	s.Mean = sum / time.Duration(len(sorted))
	s.P50 = percentile(sorted, 50)
	s.P90 = percentile(sorted, 90)
	s.P99 = percentile(sorted, 99)
	s.Max = sorted[len(sorted)-1]
	if wall > 0 {
		s.Throughput = float64(len(sorted)) / wall.Seconds()
	}
	return s
}

// percentile uses the nearest-rank method on sorted data.
func percentile(sorted []time.Duration, p float64) time.Duration {
	rank := int(math.Ceil(p / 100 * float64(len(sorted))))
	rank = max(rank, 1)
	return sorted[min(rank, len(sorted))-1]
}

// Result is a complete comparison.
type Result struct {
	Baseline Stats
	Daemon   Stats
	// Network is the daemon with networking (zero unless Options.Network).
	Network Stats
	// Pause is how long each checkpoint kept the sandbox paused, Checkpoint
	// the whole Checkpoint call, Restore the Restore call until the ready
	// event (zero unless Options.Snapshots).
	Pause, Checkpoint, Restore Stats
}

// Ratio returns daemon/baseline for a pair of figures.
func Ratio(daemon, baseline time.Duration) float64 {
	if baseline <= 0 {
		return math.NaN()
	}
	return float64(daemon) / float64(baseline)
}

// Fprint writes the result as a table with ratios.
func (r Result) Fprint(w io.Writer) {
	fmt.Fprintf(w, "%-12s %5s %10s %10s %10s %10s %10s %12s\n", "series", "n", "p50", "p90", "p99", "mean", "max", "throughput")
	series := []Stats{r.Baseline, r.Daemon}
	if r.Network.N > 0 {
		series = append(series, r.Network)
	}
	for _, s := range series {
		fmt.Fprintf(w, "%-12s %5d %10s %10s %10s %10s %10s %10.1f/s\n", s.Name, s.N,
			round(s.P50), round(s.P90), round(s.P99), round(s.Mean), round(s.Max), s.Throughput)
	}
	fmt.Fprintf(w, "ratio daemon/baseline: p50 %.2fx, p99 %.2fx, throughput %.2fx (daemon adds %+.0f%% at p50)\n",
		Ratio(r.Daemon.P50, r.Baseline.P50), Ratio(r.Daemon.P99, r.Baseline.P99),
		r.Daemon.Throughput/r.Baseline.Throughput, (Ratio(r.Daemon.P50, r.Baseline.P50)-1)*100)
	if r.Restore.N > 0 {
		fmt.Fprintf(w, "checkpoint: pause p50 %s p99 %s; whole checkpoint call p50 %s p99 %s (n=%d)\n",
			round(r.Pause.P50), round(r.Pause.P99), round(r.Checkpoint.P50), round(r.Checkpoint.P99), r.Checkpoint.N)
		fmt.Fprintf(w, "restore→READY: p50 %s p99 %s, %.1f/s (n=%d) vs create→READY p50 %s: %.2fx\n",
			round(r.Restore.P50), round(r.Restore.P99), r.Restore.Throughput, r.Restore.N, round(r.Daemon.P50),
			Ratio(r.Restore.P50, r.Daemon.P50))
	}
	if r.Network.N > 0 {
		fmt.Fprintf(w, "networking adds %s at p50 (%.2fx), %s at p99 (%.2fx) to the daemon's create→READY\n",
			round(r.Network.P50-r.Daemon.P50), Ratio(r.Network.P50, r.Daemon.P50),
			round(r.Network.P99-r.Daemon.P99), Ratio(r.Network.P99, r.Daemon.P99))
	}
}

func round(d time.Duration) string { return d.Round(10 * time.Microsecond).String() }

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

// baseline starts and configures Firecracker processes directly, with no
// daemon.
type baseline struct {
	o        Options
	launcher *vmm.DirectLauncher
	vms      []*vmm.VM
}

func newBaseline(o Options) *baseline {
	o.logf("baseline: %d direct starts, concurrency %d", o.N, o.Concurrency)
	return &baseline{o: o, launcher: &vmm.DirectLauncher{Config: vmm.Config{Binary: o.Firecracker, LogLevel: "Warning", Env: o.Env}},
		vms: make([]*vmm.VM, o.N)}
}

func (b *baseline) name() string { return "baseline" }

func (b *baseline) create(ctx context.Context, i int) error {
	o := b.o
	dir := filepath.Join(o.Dir, "baseline", fmt.Sprintf("vm%04d", i))
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	vm, err := vmm.Start(ctx, b.launcher, vmm.VMSpec{
		ID: fmt.Sprintf("bench-%d", i), Dir: dir, VCPUs: o.VCPUs, MemoryMiB: o.MemoryMiB,
		Kernel: o.kernel(), BootArgs: bootArgs,
		Drives:  []vmm.DriveSpec{{ID: "rootfs", Path: o.rootfs(), Root: true}},
		Logging: vmm.LoggingSpec{LogPath: filepath.Join(dir, "firecracker.log"), MetricsPath: filepath.Join(dir, "firecracker.metrics")},
		// The daemon gives every sandbox a vsock device: so does the
		// baseline, so that both make the same API calls.
		Vsock: &vmm.VsockSpec{CID: 3, UDSPath: "vsock.sock"},
	})
	b.vms[i] = vm // each index is written by one worker only
	return err
}

// close kills every microVM the baseline started.
func (b *baseline) close(ctx context.Context) {
	for _, vm := range b.vms {
		if vm != nil {
			_, _ = vm.Kill(context.WithoutCancel(ctx))
			_ = vm.Close()
		}
	}
}

// startNetworked starts the daemon series with networking on, inside a
// network namespace created for the run; cleanup deletes the namespace.
func startNetworked(ctx context.Context, o Options) (*daemonSeries, func(), error) {
	name := fmt.Sprintf("vmmbench-%d", os.Getpid())
	if out, err := exec.CommandContext(ctx, "ip", "netns", "add", name).CombinedOutput(); err != nil {
		return nil, nil, fmt.Errorf("creating network namespace %s (needs root and iproute2): %v: %s", name, err, out)
	}
	cleanup := func() { _ = exec.Command("ip", "netns", "del", name).Run() }
	if out, err := exec.CommandContext(ctx, "ip", "-n", name, "link", "set", "lo", "up").CombinedOutput(); err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("lo up: %v: %s", err, out)
	}
	d, err := startDaemon(ctx, o, "daemon+net", "/run/netns/"+name)
	if err != nil {
		cleanup()
		return nil, nil, err
	}
	return d, cleanup, nil
}

// daemonSeries creates sandboxes through a vmm-daemon it started (inside
// the network namespace at netns, with networking on, when netns is set)
// and measures Create until the ready event.
type daemonSeries struct {
	label  string
	cmd    *exec.Cmd
	log    *os.File
	conn   *grpc.ClientConn
	sb     sandboxv1.SandboxServiceClient
	w      *waiters
	cancel context.CancelFunc // ends the event stream
	// ids are the sandboxes created (index i by create(i)); restored
	// ones are appended by snapshots.
	ids []string
}

func startDaemon(ctx context.Context, o Options, label, netns string) (_ *daemonSeries, err error) {
	o.logf("%s: %d creates through vmm-daemon, concurrency %d", label, o.N, o.Concurrency)
	dir := filepath.Join(o.Dir, label)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	fc, err := wrapper(dir, o.Firecracker, o.Env)
	if err != nil {
		return nil, err
	}
	sock := filepath.Join(dir, "vmm.sock")
	cfg := filepath.Join(dir, "config.toml")
	conf := fmt.Sprintf(`[firecracker]
binary = %q
data_dir = %q
log_level = "Warning"

[grpc]
unix_socket = %q

[defaults]
vcpus = %d
memory_mib = %d
kernel = %q
rootfs = %q
boot_args = %q

[network]
%s

[limits]
max_sandboxes = %d
allowed_dirs = [%q, %q]

[daemon]
log_level = "warn"
on_shutdown = "stop"
`, fc, filepath.Join(dir, "data"), sock, o.VCPUs, o.MemoryMiB, o.kernel(), o.rootfs(), bootArgs, networkConf(netns), o.N+o.Snapshots+10,
		filepath.Dir(o.kernel()), filepath.Dir(o.rootfs()))
	if err := os.WriteFile(cfg, []byte(conf), 0o600); err != nil {
		return nil, err
	}
	d := &daemonSeries{label: label, ids: make([]string, o.N)}
	if d.log, err = os.Create(filepath.Join(dir, "daemon.log")); err != nil {
		return nil, err
	}
	d.cmd = exec.Command(o.Daemon, "--config", cfg)
	if netns != "" {
		d.cmd = exec.Command("nsenter", "--net="+netns, o.Daemon, "--config", cfg)
	}
	d.cmd.Stdout, d.cmd.Stderr = d.log, d.log
	if err := d.cmd.Start(); err != nil {
		d.log.Close()
		return nil, err
	}
	defer func() {
		if err != nil {
			d.close(ctx)
		}
	}()
	if d.conn, err = grpc.NewClient("unix://"+sock, grpc.WithTransportCredentials(insecure.NewCredentials())); err != nil {
		return nil, err
	}
	d.sb = sandboxv1.NewSandboxServiceClient(d.conn)
	if err := waitServing(ctx, d.sb, d.cmd); err != nil {
		log, _ := os.ReadFile(d.log.Name())
		return nil, fmt.Errorf("%w\ndaemon log:\n%s", err, log)
	}
	// One event stream feeds per-id waiters; events may arrive before
	// Create returns, so outcomes are kept until claimed.
	sctx, cancel := context.WithCancel(ctx)
	d.cancel = cancel
	stream, err := d.sb.Events(sctx, &sandboxv1.EventsRequest{Actions: []string{"ready", "failed"}})
	if err != nil {
		return nil, err
	}
	d.w = newWaiters()
	go func() {
		for {
			ev, err := stream.Recv()
			if err != nil {
				d.w.fail(err)
				return
			}
			d.w.deliver(ev)
		}
	}()
	return d, nil
}

func (d *daemonSeries) name() string { return d.label }

func (d *daemonSeries) create(ctx context.Context, i int) error {
	resp, err := d.sb.Create(ctx, &sandboxv1.CreateRequest{Ttl: durationpb.New(0)})
	if err != nil {
		return err
	}
	d.ids[i] = resp.GetSandbox().GetId() // each index is written by one worker only
	return d.w.waitReady(ctx, d.ids[i])
}

// snapshots runs the checkpoint and restore series on the first sandbox.
func (d *daemonSeries) snapshots(ctx context.Context, o Options, r *Result) error {
	restored, err := runSnapshots(ctx, o, d.conn, d.w, d.ids[0], r)
	d.ids = append(d.ids, restored...)
	return err
}

// close removes every sandbox, ends the event stream and stops the daemon
// (SIGTERM; SIGKILL after 30 s).
func (d *daemonSeries) close(ctx context.Context) {
	if d.sb != nil {
		for _, id := range d.ids {
			if id != "" {
				_, _ = d.sb.Remove(context.WithoutCancel(ctx), &sandboxv1.RemoveRequest{Id: id, Force: true})
			}
		}
	}
	if d.cancel != nil {
		d.cancel()
	}
	if d.conn != nil {
		d.conn.Close()
	}
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = d.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = d.cmd.Process.Kill()
		<-done
	}
	d.log.Close()
}

// runSnapshots checkpoints sandbox id o.Snapshots times, then restores
// o.Snapshots sandboxes from the last checkpoint. It returns the restored
// sandboxes' ids.
func runSnapshots(ctx context.Context, o Options, conn *grpc.ClientConn, w *waiters, id string, r *Result) ([]string, error) {
	snaps := sandboxv1.NewSandboxSnapshotServiceClient(conn)
	o.logf("snapshots: %d checkpoints of one sandbox, %d restores, concurrency %d", o.Snapshots, o.Snapshots, o.Concurrency)
	var pauses, calls []time.Duration
	var last string
	start := time.Now()
	for i := range o.Snapshots {
		t0 := time.Now()
		resp, err := snaps.Checkpoint(ctx, &sandboxv1.CheckpointRequest{SandboxId: id, Name: fmt.Sprintf("bench-%d", i)})
		if err != nil {
			return nil, fmt.Errorf("checkpoint: %w", err)
		}
		calls = append(calls, time.Since(t0))
		pauses = append(pauses, resp.GetSnapshot().GetPauseDuration().AsDuration())
		last = resp.GetSnapshot().GetId()
	}
	wall := time.Since(start)
	r.Pause = Summarize("pause", pauses, wall)
	r.Checkpoint = Summarize("checkpoint", calls, wall)
	ids := make([]string, o.Snapshots)
	lat, rwall, err := parallel(ctx, o.Snapshots, o.Concurrency, func(ctx context.Context, i int) error {
		resp, err := snaps.Restore(ctx, &sandboxv1.RestoreRequest{SnapshotId: last})
		if err != nil {
			return err
		}
		ids[i] = resp.GetSandbox().GetId()
		return w.waitReady(ctx, ids[i])
	})
	r.Restore = Summarize("restore", lat, rwall)
	return ids, err
}

// networkConf is the [network] section body of a benchmark daemon.
func networkConf(netns string) string {
	if netns == "" {
		return "enabled = false"
	}
	return "enabled = true\nbridge = \"vmmbench0\"\ncidr = \"10.250.0.0/16\""
}

// waitServing polls List until the daemon answers (10 s at most).
func waitServing(ctx context.Context, sb sandboxv1.SandboxServiceClient, cmd *exec.Cmd) error {
	deadline := time.Now().Add(10 * time.Second)
	for {
		cctx, cancel := context.WithTimeout(ctx, time.Second)
		_, err := sb.List(cctx, &sandboxv1.ListRequest{})
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("daemon not serving after 10s: %w", err)
		}
		if cmd.ProcessState != nil {
			return errors.New("daemon exited")
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// wrapper writes a script that runs bin with env, so that the daemon's
// Firecracker processes get the same environment as the baseline's.
func wrapper(dir, bin string, env []string) (string, error) {
	if len(env) == 0 {
		return bin, nil
	}
	p := filepath.Join(dir, "firecracker-env")
	script := "#!/bin/sh\nexec env"
	for _, kv := range env {
		script += fmt.Sprintf(" %q", kv)
	}
	script += fmt.Sprintf(" %q \"$@\"\n", bin)
	return p, os.WriteFile(p, []byte(script), 0o755)
}

// waiters hands events to the goroutine waiting for their sandbox.
type waiters struct {
	mu   sync.Mutex
	got  map[string]*sandboxv1.Event
	ch   map[string]chan *sandboxv1.Event
	err  error
	dead chan struct{}
}

func newWaiters() *waiters {
	return &waiters{got: map[string]*sandboxv1.Event{}, ch: map[string]chan *sandboxv1.Event{}, dead: make(chan struct{})}
}

func (w *waiters) deliver(ev *sandboxv1.Event) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if c, ok := w.ch[ev.GetSandboxId()]; ok {
		c <- ev
		delete(w.ch, ev.GetSandboxId())
		return
	}
	w.got[ev.GetSandboxId()] = ev
}

func (w *waiters) fail(err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.err = err
	close(w.dead)
}

// waitReady waits for sandbox id's outcome and fails unless it is ready.
func (w *waiters) waitReady(ctx context.Context, id string) error {
	ev, err := w.wait(ctx, id)
	if err != nil {
		return err
	}
	if ev.GetAction() != "ready" {
		return fmt.Errorf("sandbox %s: %s: %v", id, ev.GetAction(), ev.GetAttributes())
	}
	return nil
}

func (w *waiters) wait(ctx context.Context, id string) (*sandboxv1.Event, error) {
	w.mu.Lock()
	if ev, ok := w.got[id]; ok {
		delete(w.got, id)
		w.mu.Unlock()
		return ev, nil
	}
	c := make(chan *sandboxv1.Event, 1)
	w.ch[id] = c
	w.mu.Unlock()
	select {
	case ev := <-c:
		return ev, nil
	case <-w.dead:
		return nil, fmt.Errorf("event stream ended: %w", w.err)
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}
