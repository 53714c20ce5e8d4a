package daemon

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"github.com/firecracker-vmm/firecracker-vmm/internal/events"
	"github.com/firecracker-vmm/firecracker-vmm/internal/network"
	"github.com/firecracker-vmm/firecracker-vmm/internal/sandbox"
	"github.com/firecracker-vmm/firecracker-vmm/internal/server"
	"github.com/firecracker-vmm/firecracker-vmm/internal/snapshot"
	"github.com/firecracker-vmm/firecracker-vmm/internal/store"
	"github.com/firecracker-vmm/firecracker-vmm/internal/vmm"
)

// versionTimeout bounds `firecracker --version` at start-up.
const versionTimeout = 5 * time.Second

// manager is what the daemon needs of the sandbox manager.
type manager interface {
	server.Manager
	server.SnapshotManager
	// Recover reloads the registry from the store and re-adopts the
	// sandboxes left running; it is called once, before the daemon is
	// ready.
	Recover(ctx context.Context) error
	Shutdown(ctx context.Context) error
}

// Daemon is one run of vmm-daemon.
type Daemon struct {
	cfg   Config
	log   *slog.Logger
	ready chan struct{}
	// tcpAddr is the bound TCP address; set before ready is closed.
	tcpAddr net.Addr
	// newManager builds the sandbox manager (tests substitute a fake).
	newManager func(sandbox.Config) (manager, error)
	// crashAt is the crash point (sandbox.CrashPoints) at which the
	// daemon kills itself; empty for none.
	crashAt string
}

// CrashEnv names the environment variable that makes vmm-daemon kill
// itself with SIGKILL when it reaches a crash point (one of
// sandbox.CrashPoints). Crash-recovery tests use it; it is never set in
// production.
const CrashEnv = "VMM_CRASH_AT"

// SetCrashPoint makes the daemon kill itself with SIGKILL at point, one of
// sandbox.CrashPoints ("" for none).
func (d *Daemon) SetCrashPoint(point string) error {
	if point != "" && !sandbox.ValidCrashPoint(point) {
		return fmt.Errorf("%s=%q: want one of %s", CrashEnv, point, strings.Join(sandbox.CrashPoints, ", "))
	}
	d.crashAt = point
	return nil
}

// crashHook returns the manager's CrashPoint hook, nil without a crash
// point.
func (d *Daemon) crashHook() func(string) {
	if d.crashAt == "" {
		return nil
	}
	d.log.Warn("this daemon will kill itself at a crash point (testing only)", slog.String("point", d.crashAt))
	return func(point string) {
		if point != d.crashAt {
			return
		}
		d.log.Warn("crash point reached: killing the daemon", slog.String("point", point))
		_ = syscall.Kill(os.Getpid(), syscall.SIGKILL)
		select {} // SIGKILL cannot be caught: the process ends here
	}
}

// New returns a Daemon for a loaded configuration. log may be nil
// (slog.Default()).
func New(cfg Config, log *slog.Logger) *Daemon {
	if log == nil {
		log = slog.Default()
	}
	return &Daemon{
		cfg:   cfg,
		log:   log,
		ready: make(chan struct{}),
		newManager: func(c sandbox.Config) (manager, error) {
			return sandbox.New(c)
		},
	}
}

// Ready is closed once the daemon serves on every listener.
func (d *Daemon) Ready() <-chan struct{} { return d.ready }

// TCPAddr returns the bound address of the TCP listener (useful with port
// 0), or nil without one. Valid once Ready is closed.
func (d *Daemon) TCPAddr() net.Addr {
	select {
	case <-d.ready:
		return d.tcpAddr
	default:
		return nil
	}
}

// listener is one gRPC server and the listener it serves.
type listener struct {
	name string
	srv  *grpc.Server
	l    net.Listener
}

// Run starts the daemon and serves until ctx ends, then shuts down. At start
// it opens the state store (data_dir/state.db) and re-adopts the sandboxes
// recorded there. At shutdown it stops accepting, ends the event streams,
// lets in-flight calls finish within shutdown_timeout (then cuts them),
// leaves the sandboxes running or stops them all ([daemon] on_shutdown),
// removes the unix socket and returns. It returns nil after a clean shutdown and an error
// when start-up fails or the shutdown was not clean. Run may be called once.
func (d *Daemon) Run(ctx context.Context) error {
	cfg, log := d.cfg, d.log
	if cfg.FileMissing && cfg.Path == DefaultConfigPath {
		log.Info("config file not found; using the defaults", slog.String("path", cfg.Path))
	} else if !cfg.FileMissing {
		log.Info("config loaded", slog.String("path", cfg.Path))
	}

	fc, err := probeFirecracker(ctx, cfg.Firecracker.Binary)
	if err != nil {
		return err
	}
	bin := fc.Path
	log.Info("firecracker", slog.String("binary", bin), slog.String("version", fc.Version),
		slog.String("snapshot_version", fc.SnapshotVersion))

	gid := -1
	if cfg.GRPC.SocketGroup != "" {
		if gid, err = lookupGroup(cfg.GRPC.SocketGroup); err != nil {
			return fmt.Errorf("grpc.socket_group: %w", err)
		}
	}
	sock := cfg.GRPC.UnixSocket
	ul, err := listenUnix(ctx, sock, gid, log)
	if err != nil {
		return err
	}
	// From here on the socket is ours; every failure path closes it, which
	// unlinks it.
	defer removeSocket(sock, log)

	if err := prepareDataDir(cfg.Firecracker.DataDir); err != nil {
		ul.Close()
		return err
	}
	// One daemon per data dir: a second one would fight over the same
	// sandboxes, namespaces and snapshots.
	unlock, err := store.Lock(cfg.Firecracker.DataDir)
	if err != nil {
		ul.Close()
		return err
	}
	defer unlock()
	// The durable registry. A file that cannot be opened is an error and
	// is left exactly as it is: the daemon never wipes it.
	st, err := store.Open(store.Path(cfg.Firecracker.DataDir), store.Options{})
	if err != nil {
		ul.Close()
		return fmt.Errorf("state store (left untouched; repair or move it away to start afresh): %w", err)
	}
	defer func() {
		if err := st.Close(); err != nil {
			log.Error("closing the state store", slog.Any("error", err))
		}
	}()
	lastSeq, err := resumeSeq(ctx, st, log)
	if err != nil {
		ul.Close()
		return fmt.Errorf("state store: %w", err)
	}
	for _, dir := range cfg.AllowedDirs() {
		if _, err := os.Stat(dir); err != nil {
			log.Warn("allowed directory is not accessible", slog.String("dir", dir), slog.Any("error", err))
		}
	}

	// The TCP listener is bound before the network is set up, so that the
	// port sandboxes must not reach is the one actually bound (tcp_addr
	// may name port 0). Serve closes it; this closes it on the failure
	// paths before that.
	var tl net.Listener
	if addr := cfg.GRPC.TCPAddr; addr != "" {
		if tl, err = listenTCP(ctx, addr); err != nil {
			ul.Close()
			return err
		}
		defer tl.Close()
	}

	var netMgr sandbox.Networker
	if cfg.Network.Enabled {
		nm, err := network.New(networkConfig(&cfg, tl, log))
		if err == nil {
			err = nm.Setup(ctx)
		}
		if err != nil {
			ul.Close()
			return fmt.Errorf("network (set [network] enabled = false to run sandboxes without a network): %w", err)
		}
		log.Info("network ready", slog.String("bridge", cfg.Network.Bridge), slog.String("cidr", cfg.Network.CIDR),
			slog.String("gateway", cfg.Network.Gateway), slog.Bool("allow_inter_sandbox", cfg.Network.AllowInterSandbox))
		defer func() {
			if err := nm.Close(); err != nil {
				log.Error("closing the network manager", slog.Any("error", err))
			}
		}()
		netMgr = nm
	} else {
		log.Warn("networking is disabled ([network] enabled = false): sandboxes get no NIC")
	}

	var launcher vmm.Launcher = &vmm.DirectLauncher{Config: cfg.VMMConfig(bin)}
	if j := cfg.Firecracker.Jailer; j != nil {
		launcher = &vmm.JailerLauncher{Config: cfg.VMMConfig(bin), Jailer: cfg.JailerLauncherConfig()}
		log.Info("jailer mode", slog.String("jailer", j.Binary), slog.Int64("uid", j.UID), slog.Int64("gid", j.GID),
			slog.String("chroot_base_dir", j.ChrootBaseDir), slog.String("cgroup_version", cfg.JailerLauncherConfig().CgroupVersion))
	}

	var catalog sandbox.SnapshotCatalog
	if fc.SnapshotVersion == "" {
		log.Warn("checkpoint/restore disabled: the firecracker binary does not report its snapshot format (--snapshot-version)")
	} else {
		c, err := snapshot.Open(filepath.Join(cfg.Firecracker.DataDir, "snapshots"), log)
		if err != nil {
			ul.Close()
			return fmt.Errorf("snapshot catalog: %w", err)
		}
		log.Info("snapshot catalog loaded", slog.Int("snapshots", len(c.List(""))))
		catalog = c
	}

	jr := newJournal(st, log)
	defer jr.close() // after exchange.Close: flush what was published
	exchange := events.NewExchange(eventOptions(st, jr, log))
	exchange.SetSeq(lastSeq)
	defer exchange.Close()
	mc := cfg.ManagerConfig()
	mc.Launcher = launcher
	mc.Network = netMgr
	mc.Snapshots = catalog
	mc.FirecrackerVersion = fc.Release
	mc.SnapshotVersion = fc.SnapshotVersion
	mc.Events = exchange
	mc.Logger = log
	mc.Store = st
	mc.CrashPoint = d.crashHook()
	mgr, err := d.newManager(mc)
	if err != nil {
		ul.Close()
		return fmt.Errorf("sandbox manager: %w", err)
	}
	// Serve at once, answering UNAVAILABLE ("recovering") until the
	// recorded sandboxes are re-adopted: clients get an answer instead of
	// hanging on a socket nobody serves.
	var recovering atomic.Bool
	recovering.Store(true)
	hs := health.NewServer()
	srvCfg := server.Config{Manager: mgr, Snapshots: mgr, Events: exchange, Health: hs, Logger: log,
		Recovering: recovering.Load, EventSubscribers: server.NewSubscriberLimit(cfg.Daemon.MaxEventSubscribers)}
	listeners := []listener{{name: "unix", srv: server.NewGRPCServer(srvCfg), l: ul}}
	if tl != nil {
		opts, err := tcpServerOptions(cfg.GRPC, log)
		if err != nil {
			ul.Close()
			return errors.Join(err, d.stopManager(ctx, mgr))
		}
		listeners = append(listeners, listener{name: "tcp", srv: server.NewGRPCServer(srvCfg, opts...), l: tl})
	}

	serveErr := make(chan error, len(listeners))
	var wg sync.WaitGroup
	for _, ln := range listeners {
		wg.Go(func() {
			if err := ln.srv.Serve(ln.l); err != nil {
				serveErr <- fmt.Errorf("serving gRPC on %s: %w", ln.l.Addr(), err)
			}
		})
	}
	start := time.Now()
	if err := mgr.Recover(ctx); err != nil {
		hs.Shutdown()
		exchange.Close()
		d.stopServers(listeners)
		wg.Wait()
		return errors.Join(fmt.Errorf("recovering sandboxes: %w", err), d.stopManager(ctx, mgr))
	}
	log.Info("recovery finished", slog.Duration("duration", time.Since(start)))
	recovering.Store(false)
	server.SetServing(hs, healthpb.HealthCheckResponse_SERVING)
	attrs := []any{slog.String("socket", sock), slog.String("data_dir", cfg.Firecracker.DataDir)}
	if len(listeners) > 1 {
		d.tcpAddr = listeners[1].l.Addr()
		attrs = append(attrs, slog.String("tcp", d.tcpAddr.String()))
	}
	log.Info("vmm-daemon ready", attrs...)
	close(d.ready)

	var runErr error
	select {
	case <-ctx.Done():
		log.Info("shutting down", slog.Any("reason", context.Cause(ctx)))
	case runErr = <-serveErr:
		log.Error("shutting down after a listener failed", slog.Any("error", runErr))
	}
	hs.Shutdown()
	exchange.Close() // ends the Events streams so that GracefulStop can finish
	d.stopServers(listeners)
	wg.Wait()
	return errors.Join(runErr, d.stopManager(ctx, mgr))
}

// stopServers stops accepting and lets in-flight calls finish within the
// shutdown timeout, then closes what remains.
func (d *Daemon) stopServers(listeners []listener) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		var wg sync.WaitGroup
		for _, ln := range listeners {
			wg.Go(ln.srv.GracefulStop)
		}
		wg.Wait()
	}()
	t := time.NewTimer(d.cfg.ShutdownTimeout())
	defer t.Stop()
	select {
	case <-done:
	case <-t.C:
		d.log.Warn("in-flight calls did not finish within the shutdown timeout; cutting them",
			slog.Duration("shutdown_timeout", d.cfg.ShutdownTimeout()))
		for _, ln := range listeners {
			ln.srv.Stop()
		}
		<-done
	}
}

// stopManager stops every sandbox within the shutdown timeout.
func (d *Daemon) stopManager(ctx context.Context, mgr manager) error {
	sctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), d.cfg.ShutdownTimeout())
	defer cancel()
	if err := mgr.Shutdown(sctx); err != nil {
		return fmt.Errorf("stopping sandboxes: %w", err)
	}
	if d.cfg.Daemon.OnShutdown == string(sandbox.ShutdownLeave) {
		d.log.Info("sandboxes left running for the next start")
	} else {
		d.log.Info("all sandboxes stopped")
	}
	return nil
}

// storeTimeout bounds one event write or read of the state store.
const storeTimeout = 10 * time.Second

// eventOptions makes the exchange persist every event through the journal
// and resume from the store when its in-memory history does not reach back
// far enough.
func eventOptions(st *store.Store, jr *journal, log *slog.Logger) events.Options {
	return events.Options{
		Persist: jr.Append,
		OnPersistError: func(ev events.Event, err error) {
			log.Error("writing an event to the state store", slog.Uint64("seq", ev.Seq), slog.Any("error", err))
		},
		Backfill:     func(since uint64) ([]events.Event, bool, error) { return backfill(st, since, 0) },
		BackfillPage: func(since uint64, limit int) ([]events.Event, bool, error) { return backfill(st, since, limit) },
	}
}

// backfill reads at most limit stored events after since (all when limit
// is zero).
func backfill(st *store.Store, since uint64, limit int) ([]events.Event, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), storeTimeout)
	defer cancel()
	recs, ok, err := st.EventsPage(ctx, since, limit)
	if err != nil {
		return nil, false, err
	}
	evs := make([]events.Event, 0, len(recs))
	for _, r := range recs {
		evs = append(evs, events.Event{
			Seq: r.Seq, SandboxID: r.SandboxID, Action: r.Action, State: r.State, Time: r.Time,
			Attributes: r.Attributes,
		})
	}
	return evs, ok, nil
}

// removeSocket removes the unix socket (closing the listener usually did).
func removeSocket(path string, log *slog.Logger) {
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		log.Warn("removing the socket", slog.String("path", path), slog.Any("error", err))
	}
}

// prepareDataDir creates the data dir and its subdirectories.
func prepareDataDir(dir string) error {
	for _, d := range []struct {
		path string
		mode os.FileMode
	}{
		{dir, 0o755},
		{filepath.Join(dir, sandbox.KernelsDir), 0o755},
		{filepath.Join(dir, sandbox.ImagesDir), 0o755},
		{filepath.Join(dir, "sandboxes"), 0o700},
		{filepath.Join(dir, "snapshots"), 0o700},
	} {
		if err := os.MkdirAll(d.path, d.mode); err != nil {
			return fmt.Errorf("data dir: %w", err)
		}
	}
	return nil
}

// firecrackerInfo is what the daemon learns from the binary at start.
type firecrackerInfo struct {
	// Path is the absolute path of the binary.
	Path string
	// Version is the `--version` line (e.g. "Firecracker v1.16.1").
	Version string
	// Release is the bare release number (e.g. "1.16.1").
	Release string
	// SnapshotVersion is the snapshot data format it writes and loads
	// (`--snapshot-version`, e.g. "10.0.0"); empty when it cannot say.
	SnapshotVersion string
}

// semver finds the first vX.Y.Z in s and returns X.Y.Z.
var semver = regexp.MustCompile(`v(\d+\.\d+\.\d+)`)

// probeFirecracker finds the binary and asks it for its version and its
// snapshot data format.
func probeFirecracker(ctx context.Context, binary string) (firecrackerInfo, error) {
	path, err := exec.LookPath(binary)
	if err == nil {
		path, err = filepath.Abs(path)
	}
	if err != nil {
		return firecrackerInfo{}, fmt.Errorf("firecracker binary %q not found or not executable; install Firecracker or set [firecracker].binary in the config: %w",
			binary, err)
	}
	out, err := runFlag(ctx, path, "--version")
	if err != nil {
		return firecrackerInfo{}, err
	}
	info := firecrackerInfo{Path: path}
	info.Version, _, _ = strings.Cut(out, "\n")
	if m := semver.FindStringSubmatch(info.Version); m != nil {
		info.Release = m[1]
	}
	if out, err := runFlag(ctx, path, "--snapshot-version"); err == nil {
		if m := semver.FindStringSubmatch(out); m != nil {
			info.SnapshotVersion = m[1]
		}
	}
	return info, nil
}

// runFlag runs `binary flag` with a timeout and returns its trimmed output.
func runFlag(ctx context.Context, path, flag string) (string, error) {
	vctx, cancel := context.WithTimeout(ctx, versionTimeout)
	defer cancel()
	cmd := exec.CommandContext(vctx, path, flag)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.WaitDelay = time.Second
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("firecracker binary %s: `%s` failed: %w: %s", path, flag, err, strings.TrimSpace(out.String()))
	}
	return strings.TrimSpace(out.String()), nil
}
