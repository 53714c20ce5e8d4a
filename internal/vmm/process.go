package vmm

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ErrProcessClosed is returned by Process methods after Close.
var ErrProcessClosed = errors.New("vmm: process handle closed")

// ExitStatus describes how a process ended.
type ExitStatus struct {
	// Code is the exit code when the process exited normally (Signal == 0).
	Code int
	// Signal is the signal that killed the process, or 0.
	Signal syscall.Signal
	// Known is false when the status could not be collected, which is the
	// case for processes that are not our children (see Attach) unless
	// FromLog.
	Known bool
	// FromLog is set when the kernel gave no status (the process was not
	// our child) and Code was read instead from the last line Firecracker
	// logs as it exits ("Firecracker exiting successfully. exit_code=0",
	// "Firecracker exiting with error. exit_code=N"); Known is then true
	// and Signal 0. See VM.Wait.
	FromLog bool
}

// String formats the status like a shell would describe it.
func (s ExitStatus) String() string {
	switch {
	case !s.Known:
		return "exited (status unknown)"
	case s.Signal != 0:
		return fmt.Sprintf("killed by signal %d (%s)", int(s.Signal), s.Signal)
	case s.FromLog:
		return fmt.Sprintf("exit status %d (as logged by the VMM)", s.Code)
	default:
		return fmt.Sprintf("exit status %d", s.Code)
	}
}

// Process is a handle on a running Firecracker process, built on a pidfd so
// that signals can never reach a recycled pid. Each Process owns exactly one
// goroutine, which watches the pidfd and ends when the process ends or when
// Close is called.
type Process struct {
	pid   int
	owned bool // our child: reap it and collect its status

	done    chan struct{} // closed when the process has ended
	stopped chan struct{} // closed when the watcher goroutine has returned

	// mu guards the fields that follow.
	mu       sync.Mutex
	pidfd    int // -1 after Close
	cancelW  int // write end of the pipe that stops the watcher; -1 after Close
	cancelR  int
	status   ExitStatus
	waitErr  error
	isClosed bool
}

// newProcess wraps a pidfd and starts the watcher goroutine.
func newProcess(pid, pidfd int, owned bool) (*Process, error) {
	var p [2]int
	if err := unix.Pipe2(p[:], unix.O_CLOEXEC|unix.O_NONBLOCK); err != nil {
		return nil, fmt.Errorf("vmm: pipe: %w", err)
	}
	pr := &Process{
		pid:     pid,
		owned:   owned,
		done:    make(chan struct{}),
		stopped: make(chan struct{}),
		pidfd:   pidfd,
		cancelR: p[0],
		cancelW: p[1],
	}
	go pr.watch()
	return pr, nil
}

// Attach returns a handle on an existing process that is not our child, for
// example a Firecracker started by a previous daemon. Its exit is observed
// through the pidfd; the exit status is unknown (ExitStatus.Known is false).
func Attach(pid int) (*Process, error) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		return nil, fmt.Errorf("vmm: pidfd_open(%d): %w", pid, err)
	}
	pr, err := newProcess(pid, fd, false)
	if err != nil {
		unix.Close(fd)
		return nil, err
	}
	return pr, nil
}

// si_code values of SIGCHLD (include/uapi/asm-generic/siginfo.h).
const (
	cldExited = 1
	cldKilled = 2
	cldDumped = 3
)

// sigchldInfo is the Linux siginfo_t layout for SIGCHLD, as filled in by waitid.
type sigchldInfo struct {
	Signo  int32
	Errno  int32
	Code   int32
	_      int32
	Pid    int32
	UID    uint32
	Status int32
	_      [100]byte
}

// watch waits until the pidfd is readable (the process ended) or the cancel
// pipe is (Close was called).
func (p *Process) watch() {
	defer close(p.stopped)
	fds := []unix.PollFd{
		{Fd: int32(p.pidfd), Events: unix.POLLIN},
		{Fd: int32(p.cancelR), Events: unix.POLLIN},
	}
	for {
		_, err := unix.Poll(fds, -1)
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			p.finish(ExitStatus{}, fmt.Errorf("vmm: poll pidfd: %w", err))
			return
		}
		if fds[1].Revents != 0 {
			return // Close
		}
		if fds[0].Revents != 0 {
			break
		}
	}
	if !p.owned {
		p.finish(ExitStatus{}, nil)
		return
	}
	var info sigchldInfo
	for {
		err := unix.Waitid(unix.P_PIDFD, p.pidfd, (*unix.Siginfo)(unsafe.Pointer(&info)), unix.WEXITED, nil)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			p.finish(ExitStatus{}, fmt.Errorf("vmm: waitid: %w", err))
			return
		}
		break
	}
	st := ExitStatus{Known: true}
	switch info.Code {
	case cldExited:
		st.Code = int(info.Status)
	case cldKilled, cldDumped:
		st.Signal = syscall.Signal(info.Status)
	default:
		st.Known = false
	}
	p.finish(st, nil)
}

func (p *Process) finish(st ExitStatus, err error) {
	p.mu.Lock()
	p.status, p.waitErr = st, err
	p.mu.Unlock()
	close(p.done)
}

// Pid returns the process id.
func (p *Process) Pid() int { return p.pid }

// Done returns a channel that is closed when the process has ended. After
// Close of a live process it is never closed.
func (p *Process) Done() <-chan struct{} { return p.done }

// Exited reports whether the process has ended.
func (p *Process) Exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// Wait blocks until the process ends, ctx ends or the handle is closed, and
// returns the exit status.
func (p *Process) Wait(ctx context.Context) (ExitStatus, error) {
	select {
	case <-p.done:
		return p.result()
	default:
	}
	select {
	case <-p.done:
		return p.result()
	case <-p.stopped:
		select {
		case <-p.done:
			return p.result()
		default:
			return ExitStatus{}, ErrProcessClosed
		}
	case <-ctx.Done():
		return ExitStatus{}, fmt.Errorf("vmm: waiting for pid %d: %w", p.pid, ctx.Err())
	}
}

func (p *Process) result() (ExitStatus, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.status, p.waitErr
}

// Signal sends sig to the process through its pidfd. Signalling a process
// that has already ended returns an error wrapping os.ErrProcessDone.
func (p *Process) Signal(sig syscall.Signal) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.Exited() {
		return fmt.Errorf("vmm: signal %v to pid %d: %w", sig, p.pid, os.ErrProcessDone)
	}
	if p.isClosed {
		return ErrProcessClosed
	}
	if err := unix.PidfdSendSignal(p.pidfd, unix.Signal(sig), nil, 0); err != nil {
		if errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("vmm: signal %v to pid %d: %w", sig, p.pid, os.ErrProcessDone)
		}
		return fmt.Errorf("vmm: signal %v to pid %d: %w", sig, p.pid, err)
	}
	return nil
}

// Kill sends SIGKILL. Killing an ended process is not an error.
func (p *Process) Kill() error {
	err := p.Signal(syscall.SIGKILL)
	if errors.Is(err, os.ErrProcessDone) {
		return nil
	}
	return err
}

// Close stops the watcher goroutine and releases the pidfd. It does not
// signal the process, which keeps running if it was alive (a child that is
// not reaped stays a zombie until our process exits). Close is idempotent.
func (p *Process) Close() error {
	p.mu.Lock()
	if p.isClosed {
		p.mu.Unlock()
		return nil
	}
	p.isClosed = true
	_, _ = unix.Write(p.cancelW, []byte{1})
	p.mu.Unlock()

	<-p.stopped

	p.mu.Lock()
	defer p.mu.Unlock()
	err := unix.Close(p.pidfd)
	unix.Close(p.cancelR)
	unix.Close(p.cancelW)
	p.pidfd, p.cancelR, p.cancelW = -1, -1, -1
	if err != nil {
		return fmt.Errorf("vmm: close pidfd: %w", err)
	}
	return nil
}
