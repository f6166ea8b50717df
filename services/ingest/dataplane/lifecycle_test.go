package main

import (
	"net"
	"syscall"
	"testing"
	"time"

	srt "github.com/datarhei/gosrt"
)

// waitClosed waits until a gosrt connection reports that the data plane closed it.
func waitClosed(t *testing.T, c srt.Conn, within time.Duration) {
	t.Helper()
	done := make(chan struct{})
	go func() {
		buf := make([]byte, 1500)
		for {
			if _, err := c.Read(buf); err != nil {
				close(done)
				return
			}
		}
	}()
	select {
	case <-done:
	case <-time.After(within):
		t.Fatalf("connection still open after %v", within)
	}
}

// listen on a taken port fails; close ends the server's contributions and closes their readers
// (on the fan-out too); a closed server's port refuses; listen again reopens it.
func TestServerLifecycle(t *testing.T) {
	t.Parallel()
	p := startPlane(t, allowAll)

	taken, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	sidBad := newServerID()
	p.send(event{"op": "listen", "server_id": sidBad, "proto": "srt", "host": "127.0.0.1",
		"port": taken.LocalAddr().(*net.UDPAddr).Port, "latency_ms": 120})
	if ev := p.wait(3*time.Second, isEv("listen_failed", "server_id", sidBad)); ev["error"] == "" {
		t.Errorf("listen_failed without error: %v", ev)
	}

	sid, port := p.listen("srt")
	pub, err := dial(port, "publisher/a", "")
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	p.wait(3*time.Second, isEv("publisher_up", "name", "a"))
	rd, err := dial(p.fanout, "read/"+sid+"/a", "")
	if err != nil {
		t.Fatal(err)
	}
	defer rd.Close()
	p.wait(3*time.Second, isEv("reader_up", "name", "a", "via", "fanout"))

	p.send(event{"op": "close", "server_id": sid})
	p.wait(3*time.Second, isEv("closed", "server_id", sid))
	p.wait(3*time.Second, isEv("contribution_ended", "name", "a", "reason", "closed"))
	p.wait(3*time.Second, isEv("reader_gone", "name", "a", "reason", "ended"))
	waitClosed(t, rd, 3*time.Second)
	waitClosed(t, pub, 3*time.Second)
	cfg := srt.DefaultConfig()
	cfg.StreamId = "publisher/a"
	cfg.ConnectionTimeout = 500 * time.Millisecond
	if c, err := srt.Dial("srt", p.addr(port), cfg); err == nil {
		c.Close()
		t.Fatalf("a closed server accepted a publisher")
	}

	p.send(event{"op": "listen", "server_id": sid, "proto": "srt", "host": "127.0.0.1", "port": port, "latency_ms": 120})
	for deadline := time.Now().Add(3 * time.Second); p.count(isEv("listening", "server_id", sid)) < 2; {
		if time.Now().After(deadline) {
			t.Fatalf("no second listening")
		}
		time.Sleep(20 * time.Millisecond)
	}
	c, err := dial(port, "publisher/a", "")
	if err != nil {
		t.Fatalf("reopened server: %v", err)
	}
	c.Close()
}

// SIGTERM closes every connection and exits 0.
func TestSIGTERM(t *testing.T) {
	t.Parallel()
	p := startPlane(t, allowAll)
	_, port := p.listen("srt")
	pub, err := dial(port, "publisher/a", "")
	if err != nil {
		t.Fatal(err)
	}
	defer pub.Close()
	p.wait(3*time.Second, isEv("publisher_up", "name", "a"))
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, pub, 3*time.Second)
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		t.Fatalf("no exit after SIGTERM")
	}
	p.wait(time.Second, isEv("contribution_ended", "name", "a", "reason", "closed"))
}
