package fcemu_test

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"strings"
	"testing"
	"time"
)

func TestFaultFail(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{env: []string{"FCEMU_FAULTS= fail PUT /drives/*=disk on fire ; fail PUT /actions#InstanceStart@2 ; fail PATCH /vm#Paused"}})
	disk := file(t, p.dir, "d", 4096)
	p.expectFault("PUT", "/drives/a", fmt.Sprintf(`{"drive_id":"a","path_on_host":%q,"is_root_device":false}`, disk), "disk on fire")
	// The failed call changed nothing, not even the boot-path flag.
	if r := p.must(200, "GET", "/vm/config", ""); !strings.Contains(r.body, `"drives":[]`) {
		t.Fatalf("failed call changed state: %s", r.body)
	}
	p.expectFault("PUT", "/actions", `{"action_type":"InstanceStart"}`, "Start microvm error: Cannot start microvm without kernel configuration.")
	p.must(204, "PUT", "/boot-source", fmt.Sprintf(`{"kernel_image_path":%q}`, file(t, p.dir, "k", 1)))
	p.expectFault("PUT", "/actions", `{"action_type":"InstanceStart"}`, "injected fault") // 2nd matching call
	p.must(204, "PUT", "/actions", `{"action_type":"InstanceStart"}`)
	p.must(204, "PATCH", "/vm", `{"state":"Resumed"}`)
	p.expectFault("PATCH", "/vm", `{"state":"Paused"}`, "injected fault")
}

func TestFaultExit(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{env: []string{"FCEMU_FAULTS=exit PUT /actions#InstanceStart=7"}})
	c, err := net.Dial("unix", p.sock)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	body := `{"action_type":"InstanceStart"}`
	fmt.Fprintf(c, "PUT /actions HTTP/1.1\r\nContent-Length: %d\r\n\r\n%s", len(body), body)
	if code := p.exitCode(5 * time.Second); code != 7 {
		t.Fatalf("exit %d, want 7", code)
	}
	if n, _ := io.ReadAll(c); len(n) != 0 {
		t.Fatalf("exit fault answered: %q", n)
	}
}

func TestFaultHang(t *testing.T) {
	t.Parallel()
	p := start(t, startOpts{env: []string{"FCEMU_FAULTS=hang GET /machine-config"}})
	ask := func(path string) chan error {
		ch := make(chan error, 1)
		c, err := net.Dial("unix", p.sock)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		fmt.Fprintf(c, "GET %s HTTP/1.1\r\n\r\n", path)
		go func() {
			_, err := readResp(bufio.NewReader(c))
			ch <- err
		}()
		return ch
	}
	hung := ask("/machine-config")
	time.Sleep(100 * time.Millisecond) // let the hung call take the API first
	blocked := ask("/")
	select {
	case err := <-hung:
		t.Fatalf("hung call answered: %v", err)
	case err := <-blocked:
		t.Fatalf("serial API answered behind a hung call: %v", err)
	case <-time.After(300 * time.Millisecond):
	}
	_ = p.cmd.Process.Kill()
	p.wait(5 * time.Second)
	<-hung
	<-blocked
}

func TestFaultExitAfter(t *testing.T) {
	t.Parallel()
	t.Run("from start", func(t *testing.T) {
		t.Parallel()
		p := start(t, startOpts{env: []string{"FCEMU_FAULTS=exit-after 200=9"}})
		if code := p.exitCode(5 * time.Second); code != 9 {
			t.Fatalf("exit %d, want 9", code)
		}
	})
	t.Run("from boot", func(t *testing.T) {
		t.Parallel()
		p := start(t, startOpts{env: []string{"FCEMU_FAULTS=exit-after-boot 100"}})
		if !p.alive(250 * time.Millisecond) {
			t.Fatal("exit-after-boot fired before boot")
		}
		p.boot("-")
		if code := p.exitCode(5 * time.Second); code != 1 {
			t.Fatalf("exit %d, want 1", code)
		}
	})
}
