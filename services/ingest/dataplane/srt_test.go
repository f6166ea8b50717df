package main

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	srt "github.com/datarhei/gosrt"
)

const secret = "correct-horse-battery"

// serviceVerdicts answers like the ingest service would for the rows these tests pretend exist.
func serviceVerdicts(ev event) event {
	sid := fmt.Sprint(ev["stream_id"])
	switch {
	case strings.Contains(sid, "nope"):
		return event{"allow": false, "reason": "unknown_stream"}
	case strings.Contains(sid, "slow"):
		return nil
	case strings.Contains(sid, "secret"):
		return event{"allow": true, "passphrase": secret}
	case ev["proto"] == "rtmp" && ev["role"] == "publish" && ev["key"] != "k":
		return event{"allow": false, "reason": "bad_passphrase"}
	}
	return event{"allow": true, "passphrase": ""}
}

func dial(port int, streamID, passphrase string) (srt.Conn, error) {
	cfg := srt.DefaultConfig()
	cfg.StreamId = streamID
	cfg.Passphrase = passphrase
	return srt.Dial("srt", fmt.Sprintf("127.0.0.1:%d", port), cfg)
}

// readTS reads n bytes of MPEG-TS from a gosrt reader.
func recvTS(t *testing.T, c srt.Conn, n int) []byte {
	t.Helper()
	buf := make([]byte, 0, n+1500)
	tmp := make([]byte, 1500)
	done := make(chan struct{})
	go func() {
		defer close(done)
		for len(buf) < n {
			k, err := c.Read(tmp)
			if err != nil {
				return
			}
			buf = append(buf, tmp[:k]...)
		}
	}()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		c.Close()
		<-done
	}
	if len(buf) < n {
		t.Fatalf("read %d of %d bytes", len(buf), n)
	}
	return buf
}

func pid(p []byte) int { return int(p[1]&0x1F)<<8 | int(p[2]) }

// One FFmpeg SRT publisher, read by two FFmpeg readers through the fan-out and by gosrt readers
// on the server port; the refusals run against the same live contribution.
func TestSRTFanout(t *testing.T) {
	requireFFmpeg(t)
	t.Parallel()
	p := startPlane(t, serviceVerdicts)
	sid, port := p.listen("srt")
	encoder(t, "mpegts", srtURL(port, "publisher/main-stage/x"))
	up := p.wait(10*time.Second, isEv("publisher_up", "server_id", sid, "name", "main-stage/x"))
	if up["via"] != "server" || up["proto"] != "srt" || up["role"] != "publish" {
		t.Errorf("publisher_up: %v", up)
	}

	dir := t.TempDir()
	var files []string
	var readers []func()
	for i := range 2 {
		out := filepath.Join(dir, fmt.Sprintf("r%d.ts", i))
		files = append(files, out)
		cmd, stderr := ffReader(t, srtURL(p.fanout, "read/"+sid+"/main-stage/x"), out, "-t", "3")
		readers = append(readers, func() {
			if err := waitExit(t, cmd, 20*time.Second); err != nil {
				t.Errorf("reader %d: %v: %s", i, err, stderr)
			}
		})
	}

	t.Run("gosrt reader starts with PAT, PMT and a keyframe", func(t *testing.T) {
		c, err := dial(port, "receiver/main-stage/x", "")
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		b := recvTS(t, c, 3*188)
		if pid(b) != 0 {
			t.Errorf("first packet PID %d, want PAT", pid(b))
		}
		if pid(b[188:]) == 0 || pid(b[188:]) >= 0x1FFF {
			t.Errorf("second packet PID %d, want the PMT", pid(b[188:]))
		}
		v := b[376:]
		if v[1]&0x40 == 0 || v[3]&0x20 == 0 || v[5]&0x40 == 0 {
			t.Errorf("third packet is not a PES start with the random-access indicator: % x", v[:12])
		}
	})

	t.Run("stream id form #!:: on the fan-out", func(t *testing.T) {
		c, err := dial(p.fanout, "#!::r="+sid+"/main-stage/x,m=request", "")
		if err != nil {
			t.Fatal(err)
		}
		_ = recvTS(t, c, 188)
		c.Close()
		p.wait(5*time.Second, isEv("reader_gone", "via", "fanout"))
	})

	refusals := []struct {
		name, streamID, pass, reason string
		port                         int
	}{
		{"duplicate publisher", "publisher/main-stage/x", "", "duplicate", port},
		{"unknown stream", "publisher/nope", "", "unknown_stream", port},
		{"wrong passphrase", "publisher/secret", "wrong-passphrase-123", "bad_passphrase", port},
		{"missing passphrase", "publisher/secret", "", "missing_passphrase", port},
		{"unexpected passphrase", "publisher/open", "some-passphrase-123", "bad_passphrase", port},
		{"reader of nothing", "read/" + sid + "/ghost", "", "not_live", p.fanout},
		{"bad stream id", "hello", "", "bad_stream_id", port},
		{"publish on the fan-out", "publisher/x", "", "bad_stream_id", p.fanout},
		{"no verdict", "publisher/slow", "", "timeout", port},
	}
	for _, r := range refusals {
		t.Run("refused "+r.name, func(t *testing.T) {
			before := p.count(isEv("refused", "reason", r.reason, "stream_id", r.streamID))
			c, err := dial(r.port, r.streamID, r.pass)
			if err == nil {
				c.Close()
				t.Fatalf("%s was accepted", r.streamID)
			}
			deadline := time.Now().Add(3 * time.Second)
			for p.count(isEv("refused", "reason", r.reason, "stream_id", r.streamID)) <= before {
				if time.Now().After(deadline) {
					t.Fatalf("no refused event with reason %s (dial: %v)", r.reason, err)
				}
				time.Sleep(20 * time.Millisecond)
			}
		})
	}

	t.Run("right passphrase", func(t *testing.T) {
		c, err := dial(port, "publisher/secret", secret)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		p.wait(3*time.Second, isEv("publisher_up", "name", "secret"))
	})

	for _, wait := range readers {
		wait()
	}
	for _, f := range files {
		checkStartsAtKeyframe(t, f, 50)
		if a := audioCodec(t, f); a != "aac" {
			t.Errorf("%s: audio %q", f, a)
		}
	}

	st := p.wait(5*time.Second, func(ev event) bool {
		if ev["ev"] != "stats" {
			return false
		}
		for _, c := range ev["contributions"].([]any) {
			m := c.(map[string]any)
			if m["name"] == "main-stage/x" && m["bytes"].(float64) > 0 && m["publisher"] == true {
				return true
			}
		}
		return false
	})
	found := false
	for _, c := range st["conns"].([]any) {
		m := c.(map[string]any)
		if m["role"] == "publish" && m["name"] == "main-stage/x" {
			found = true
			for _, k := range []string{"rtt_ms", "recv_rate_kbits", "link_capacity_kbits", "pkt_recv_loss",
				"pkt_retrans", "pkt_recv_drop", "recv_buffer_ms", "latency_ms", "bitrate_kbits", "connected_at"} {
				if _, ok := m[k]; !ok {
					t.Errorf("stats conn has no %s: %v", k, m)
				}
			}
			if m["latency_ms"].(float64) < 120 {
				t.Errorf("latency_ms %v", m["latency_ms"])
			}
		}
	}
	if !found {
		t.Errorf("stats: no publisher conn: %v", st)
	}
	if p.count(isEv("reader_up", "via", "fanout", "name", "main-stage/x")) < 3 {
		t.Errorf("want 3 fan-out readers up")
	}
}
