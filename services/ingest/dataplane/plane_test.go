package main

// Test harness: the real binary as a subprocess, the test acting as the ingest service (it reads
// the events and answers the connect callbacks), real gosrt clients and real FFmpeg.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

var binPath string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "reelhouse-ingest-test")
	if err != nil {
		panic(err)
	}
	binPath = filepath.Join(dir, "reelhouse-ingest")
	args := []string{"build", "-o", binPath}
	if os.Getenv("DATAPLANE_RACE") != "" {
		args = append(args, "-race")
	}
	out, err := exec.Command("go", append(args, ".")...).CombinedOutput()
	if err != nil {
		fmt.Fprintf(os.Stderr, "build failed: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

type event = map[string]any

type plane struct {
	t      *testing.T
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	fanout int
	done   chan struct{}

	sendMu  sync.Mutex
	mu      sync.Mutex
	events  []event
	verdict func(ev event) event // nil answer: no verdict (the connect times out)
	stderr  bytes.Buffer
}

func freePort(t *testing.T, network string) int {
	t.Helper()
	if network == "udp" {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func newServerID() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

func allowAll(event) event { return event{"allow": true, "passphrase": ""} }

func startPlane(t *testing.T, verdict func(event) event, args ...string) *plane {
	t.Helper()
	p := &plane{t: t, fanout: freePort(t, "udp"), verdict: verdict, done: make(chan struct{})}
	args = append([]string{"-fanout", fmt.Sprintf("127.0.0.1:%d", p.fanout), "-stats-interval", "500ms",
		"-gap-hold", "4s", "-verdict-timeout", "1s"}, args...)
	p.cmd = exec.Command(binPath, args...)
	p.cmd.Stderr = &lockedWriter{mu: &p.mu, w: &p.stderr}
	stdout, err := p.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if p.stdin, err = p.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go p.readEvents(stdout)
	t.Cleanup(func() {
		_ = p.stdin.Close()
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			_ = p.cmd.Process.Kill()
			t.Errorf("data plane did not exit on stdin EOF")
		}
		if err := p.cmd.Wait(); err != nil {
			t.Errorf("data plane exit: %v", err)
		}
		if t.Failed() {
			p.mu.Lock()
			t.Logf("data plane stderr:\n%s", p.stderr.String())
			p.mu.Unlock()
		}
	})
	ready := p.wait(5*time.Second, func(ev event) bool { return ev["ev"] == "ready" })
	if ready["fanout"] != fmt.Sprintf("127.0.0.1:%d", p.fanout) {
		t.Fatalf("ready: %v", ready)
	}
	return p
}

type lockedWriter struct {
	mu *sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(b []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(b)
}

func (p *plane) readEvents(r io.Reader) {
	defer close(p.done)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 1<<20), 1<<22)
	for sc.Scan() {
		var ev event
		if err := json.Unmarshal(sc.Bytes(), &ev); err != nil {
			p.t.Errorf("bad event line %q: %v", sc.Text(), err)
			continue
		}
		p.mu.Lock()
		p.events = append(p.events, ev)
		v := p.verdict
		p.mu.Unlock()
		if ev["ev"] == "connect" {
			if ans := v(ev); ans != nil {
				ans["op"], ans["req"] = "verdict", ev["req"]
				p.send(ans)
			}
		}
	}
}

func (p *plane) send(cmd event) {
	b, _ := json.Marshal(cmd)
	p.sendMu.Lock()
	defer p.sendMu.Unlock()
	_, _ = p.stdin.Write(append(b, '\n'))
}

// wait returns the first event (from the start) that matches, or fails the test.
func (p *plane) wait(timeout time.Duration, match func(event) bool) event {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		if ev := p.find(match); ev != nil {
			return ev
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("no matching event within %v", timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func (p *plane) find(match func(event) bool) event {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, ev := range p.events {
		if match(ev) {
			return ev
		}
	}
	return nil
}

func (p *plane) count(match func(event) bool) int {
	p.mu.Lock()
	defer p.mu.Unlock()
	n := 0
	for _, ev := range p.events {
		if match(ev) {
			n++
		}
	}
	return n
}

func isEv(name string, kv ...string) func(event) bool {
	return func(ev event) bool {
		if ev["ev"] != name {
			return false
		}
		for i := 0; i+1 < len(kv); i += 2 {
			if fmt.Sprint(ev[kv[i]]) != kv[i+1] {
				return false
			}
		}
		return true
	}
}

func (p *plane) listen(proto string) (string, int) {
	p.t.Helper()
	sid := newServerID()
	network := "udp"
	if proto == "rtmp" {
		network = "tcp"
	}
	port := freePort(p.t, network)
	p.send(event{"op": "listen", "server_id": sid, "proto": proto, "host": "127.0.0.1", "port": port, "latency_ms": 120})
	p.wait(5*time.Second, isEv("listening", "server_id", sid))
	return sid, port
}

// ---- FFmpeg ----

func requireFFmpeg(t *testing.T) {
	t.Helper()
	for _, b := range []string{"ffmpeg", "ffprobe"} {
		if _, err := exec.LookPath(b); err != nil {
			t.Skipf("%s not installed", b)
		}
	}
}

// encoder starts a live test-pattern encoder (320x240, 25 fps, keyframe every 25 frames, AAC).
func encoder(t *testing.T, format, url string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-re",
		"-f", "lavfi", "-i", "testsrc2=size=320x240:rate=25",
		"-f", "lavfi", "-i", "sine=frequency=440:sample_rate=48000",
		"-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-pix_fmt", "yuv420p",
		"-c:a", "aac", "-b:a", "64k", "-f", format, url)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd
}

// reader starts an FFmpeg reader that copies the fan-out into a file.
func ffReader(t *testing.T, url, out string, extra ...string) (*exec.Cmd, *bytes.Buffer) {
	t.Helper()
	args := []string{"-hide_banner", "-loglevel", "error", "-i", url}
	args = append(args, extra...)
	args = append(args, "-c", "copy", "-f", "mpegts", "-y", out)
	cmd := exec.Command("ffmpeg", args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
	})
	return cmd, &stderr
}

func waitExit(t *testing.T, cmd *exec.Cmd, timeout time.Duration) error {
	t.Helper()
	ch := make(chan error, 1)
	go func() { ch <- cmd.Wait() }()
	select {
	case err := <-ch:
		return err
	case <-time.After(timeout):
		_ = cmd.Process.Kill()
		<-ch
		t.Fatalf("%s did not exit within %v", cmd.Args[0], timeout)
		return nil
	}
}

type videoPacket struct {
	pts, dts float64
	key      bool
}

// probeVideo lists the file's video packets, and the number of frames that decode.
func probeVideo(t *testing.T, file string) ([]videoPacket, int, string) {
	t.Helper()
	out, err := exec.Command("ffprobe", "-v", "error", "-select_streams", "v:0",
		"-show_entries", "packet=pts_time,dts_time,flags", "-of", "csv=p=0", file).Output()
	if err != nil {
		t.Fatalf("ffprobe %s: %v", file, err)
	}
	var pkts []videoPacket
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, ",")
		if len(f) < 3 {
			continue
		}
		pts, _ := strconv.ParseFloat(f[0], 64)
		dts, _ := strconv.ParseFloat(f[1], 64)
		pkts = append(pkts, videoPacket{pts, dts, strings.Contains(f[2], "K")})
	}
	frames, err := exec.Command("ffprobe", "-v", "error", "-count_frames", "-select_streams", "v:0",
		"-show_entries", "stream=nb_read_frames,codec_name", "-of", "csv=p=0", file).Output()
	if err != nil {
		t.Fatalf("ffprobe -count_frames %s: %v", file, err)
	}
	line, _, _ := strings.Cut(strings.TrimSpace(string(frames)), "\n")
	f := strings.Split(line, ",")
	n := 0
	if len(f) == 2 {
		n, _ = strconv.Atoi(f[1])
	}
	return pkts, n, f[0]
}

func audioCodec(t *testing.T, file string) string {
	out, _ := exec.Command("ffprobe", "-v", "error", "-select_streams", "a:0",
		"-show_entries", "stream=codec_name", "-of", "csv=p=0", file).Output()
	first, _, _ := strings.Cut(strings.TrimSpace(string(out)), "\n")
	return first
}

func checkStartsAtKeyframe(t *testing.T, file string, minPackets int) []videoPacket {
	t.Helper()
	pkts, frames, codec := probeVideo(t, file)
	if codec != "h264" {
		t.Errorf("%s: video codec %q", file, codec)
	}
	if len(pkts) < minPackets {
		t.Fatalf("%s: %d video packets, want >= %d", file, len(pkts), minPackets)
	}
	if !pkts[0].key {
		t.Errorf("%s: first video packet is not a keyframe", file)
	}
	if frames < len(pkts)-1 {
		t.Errorf("%s: %d of %d video packets decode", file, frames, len(pkts))
	}
	return pkts
}

func srtURL(port int, streamID string) string {
	return fmt.Sprintf("srt://127.0.0.1:%d?streamid=%s&mode=caller&latency=120000", port, streamID)
}

func (p *plane) addr(port int) string { return fmt.Sprintf("127.0.0.1:%d", port) }

// audioPTS lists the first audio stream's packet timestamps.
func audioPTS(t *testing.T, file string) []float64 {
	t.Helper()
	out, err := exec.Command("ffprobe", "-v", "error", "-select_streams", "a:0",
		"-show_entries", "packet=pts_time", "-of", "csv=p=0", file).Output()
	if err != nil {
		t.Fatalf("ffprobe %s: %v", file, err)
	}
	var pts []float64
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		if v, err := strconv.ParseFloat(strings.TrimSuffix(line, ","), 64); err == nil {
			pts = append(pts, v)
		}
	}
	return pts
}

// checkContinuous fails on a timestamp that goes backwards or jumps more than maxStep seconds.
func checkContinuous(t *testing.T, what string, ts []float64, maxStep float64) {
	t.Helper()
	bad := 0
	for i := 1; i < len(ts); i++ {
		if d := ts[i] - ts[i-1]; d <= 0 || d > maxStep {
			if bad++; bad <= 5 {
				t.Errorf("%s: step %.3f s at %d (%.3f -> %.3f)", what, d, i, ts[i-1], ts[i])
			}
		}
	}
}
