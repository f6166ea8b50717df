package main

// gosrt (the data plane's SRT server) against libsrt (Debian's srt-live-transmit) as the receiver
// of the same FFmpeg (libsrt) caller through the same lossy UDP relay. Opt-in, it takes about
// 40 s: DATAPLANE_COMPARE=1 go test -run TestCompareLibsrt -v. Results: bench/ingest_gosrt_vs_libsrt.md.

import (
	"bufio"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// lossyRelay forwards UDP between one caller and target, dropping a fraction of the caller's
// data packets (control packets pass) and delaying every packet by delay each way.
func lossyRelay(t *testing.T, target string, loss float64, delay time.Duration) (int, *relayCounts) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	up, err := net.Dial("udp", target)
	if err != nil {
		t.Fatal(err)
	}
	counts := &relayCounts{}
	var mu sync.Mutex
	var caller net.Addr
	t.Cleanup(func() { pc.Close(); up.Close() })
	// one FIFO per direction: a delay line that keeps the packets' order
	fwd, back := make(chan delayed, 1<<16), make(chan delayed, 1<<16)
	line := func(q chan delayed, send func(delayed)) {
		for d := range q {
			time.Sleep(time.Until(d.due))
			send(d)
		}
	}
	go line(fwd, func(d delayed) { _, _ = up.Write(d.b) })
	go line(back, func(d delayed) {
		if d.to != nil {
			_, _ = pc.WriteTo(d.b, d.to)
		}
	})
	go func() {
		buf := make([]byte, 2048)
		for {
			n, addr, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			mu.Lock()
			caller = addr
			mu.Unlock()
			b := append([]byte(nil), buf[:n]...)
			if b[0]&0x80 == 0 { // data packet
				counts.add(rand.Float64() < loss)
				if counts.lastDropped() {
					continue
				}
			}
			fwd <- delayed{time.Now().Add(delay), b, nil}
		}
	}()
	go func() {
		buf := make([]byte, 2048)
		for {
			n, err := up.Read(buf)
			if err != nil {
				return
			}
			b := append([]byte(nil), buf[:n]...)
			mu.Lock()
			to := caller
			mu.Unlock()
			back <- delayed{time.Now().Add(delay), b, to}
		}
	}()
	return pc.LocalAddr().(*net.UDPAddr).Port, counts
}

type delayed struct {
	due time.Time
	b   []byte
	to  net.Addr
}

type relayCounts struct {
	mu            sync.Mutex
	data, dropped int
	last          bool
}

func (c *relayCounts) add(drop bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.data++
	c.last = drop
	if drop {
		c.dropped++
	}
}

func (c *relayCounts) lastDropped() bool { c.mu.Lock(); defer c.mu.Unlock(); return c.last }

func (c *relayCounts) get() (int, int) { c.mu.Lock(); defer c.mu.Unlock(); return c.data, c.dropped }

func compareEncoder(t *testing.T, url string) *exec.Cmd {
	cmd := exec.Command("ffmpeg", "-hide_banner", "-loglevel", "error", "-re",
		"-f", "lavfi", "-i", "testsrc2=size=640x360:rate=25", "-f", "lavfi", "-i", "sine",
		"-c:v", "libx264", "-preset", "ultrafast", "-g", "25", "-b:v", "2M", "-pix_fmt", "yuv420p",
		"-c:a", "aac", "-t", "20", "-f", "mpegts", url)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	return cmd
}

// decodeErrors counts FFmpeg's error lines decoding a file.
func decodeErrors(file string) int {
	out, _ := exec.Command("ffmpeg", "-v", "error", "-i", file, "-f", "null", "-").CombinedOutput()
	if s := strings.TrimSpace(string(out)); s != "" {
		return len(strings.Split(s, "\n"))
	}
	return 0
}

func TestCompareLibsrt(t *testing.T) {
	if os.Getenv("DATAPLANE_COMPARE") == "" {
		t.Skip("opt-in: DATAPLANE_COMPARE=1")
	}
	requireFFmpeg(t)
	if _, err := exec.LookPath("srt-live-transmit"); err != nil {
		t.Skip("srt-live-transmit (Debian srt-tools) not installed")
	}
	const loss, delay = 0.05, 20 * time.Millisecond
	dir := t.TempDir()
	if d := os.Getenv("DATAPLANE_COMPARE_DIR"); d != "" {
		dir = d
	}
	var rows []string

	// gosrt: the data plane's SRT server, read through the fan-out
	{
		p := startPlane(t, allowAll)
		sid, port := p.listen("srt")
		rport, counts := lossyRelay(t, fmt.Sprintf("127.0.0.1:%d", port), loss, delay)
		enc := compareEncoder(t, srtURL(rport, "publisher/cmp"))
		p.wait(10*time.Second, isEv("publisher_up", "name", "cmp"))
		out := filepath.Join(dir, "gosrt.ts")
		rd, _ := ffReader(t, srtURL(p.fanout, "read/"+sid+"/cmp"), out)
		_ = waitExit(t, enc, 40*time.Second)
		var last event
		p.mu.Lock()
		for _, ev := range p.events {
			if ev["ev"] != "stats" {
				continue
			}
			for _, c := range ev["conns"].([]any) {
				if m := c.(map[string]any); m["role"] == "publish" && m["name"] == "cmp" {
					last = m
				}
			}
		}
		p.mu.Unlock()
		_ = rd.Process.Signal(os.Interrupt)
		_ = waitExit(t, rd, 10*time.Second)
		data, dropped := counts.get()
		pk, _, _ := probeVideo(t, out)
		rows = append(rows, fmt.Sprintf("| gosrt v0.11.0 (reelhouse-ingest) | %d / %d | %v | %v | %v | %v | %v | %d | %d |",
			dropped, data, last["pkt_recv_loss"], last["pkt_retrans"], last["pkt_recv_drop"],
			last["recv_buffer_ms"], last["rtt_ms"], len(pk), decodeErrors(out)))
	}

	// libsrt: srt-live-transmit as the listener, relaying to UDP for an FFmpeg reader
	{
		port := freePort(t, "udp")
		uport := freePort(t, "udp")
		statsFile := filepath.Join(dir, "slt.json")
		slt := exec.Command("srt-live-transmit", "-s:100", "-pf:json", "-f", "-statsout:"+statsFile,
			fmt.Sprintf("srt://127.0.0.1:%d?mode=listener&latency=120", port),
			fmt.Sprintf("udp://127.0.0.1:%d", uport))
		if err := slt.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = slt.Process.Kill(); _ = slt.Wait() })
		out := filepath.Join(dir, "libsrt.ts")
		rd, _ := ffReader(t, fmt.Sprintf("udp://127.0.0.1:%d?fifo_size=100000&overrun_nonfatal=1", uport), out)
		rport, counts := lossyRelay(t, fmt.Sprintf("127.0.0.1:%d", port), loss, delay)
		time.Sleep(500 * time.Millisecond)
		enc := compareEncoder(t, fmt.Sprintf("srt://127.0.0.1:%d?mode=caller&latency=120000", rport))
		_ = waitExit(t, enc, 40*time.Second)
		time.Sleep(time.Second)
		_ = rd.Process.Kill() // an FFmpeg UDP reader does not end on SIGINT while no data comes
		_ = rd.Wait()
		_ = slt.Process.Signal(os.Interrupt)
		time.Sleep(300 * time.Millisecond)
		last := lastJSON(statsFile)
		recv, _ := last["recv"].(map[string]any)
		link, _ := last["link"].(map[string]any)
		data, dropped := counts.get()
		pk, _, _ := probeVideo(t, out)
		rows = append(rows, fmt.Sprintf("| libsrt 1.5.1 (srt-live-transmit) | %d / %d | %v | %v | %v | %v | %v | %d | %d |",
			dropped, data, recv["packetsLost"], recv["packetsRetransmitted"], recv["packetsDropped"],
			recv["msBuf"], link["rtt"], len(pk), decodeErrors(out)))
	}

	t.Logf("\n| receiver | relay dropped / data pkts | recv loss | retransmitted | recv drop | recv buffer ms | RTT ms | video pkts out | decode errors |\n|---|---|---|---|---|---|---|---|---|\n%s",
		strings.Join(rows, "\n"))
}

// lastJSON returns the last JSON object in srt-live-transmit's stats file.
func lastJSON(file string) map[string]any {
	f, err := os.Open(file)
	if err != nil {
		return nil
	}
	defer f.Close()
	var last map[string]any
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var acc strings.Builder
	for sc.Scan() {
		acc.WriteString(sc.Text())
		var m map[string]any
		if json.Unmarshal([]byte(strings.TrimSuffix(strings.TrimSpace(acc.String()), ",")), &m) == nil {
			last = m
			acc.Reset()
		}
	}
	return last
}
