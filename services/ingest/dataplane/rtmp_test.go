package main

import (
	"fmt"
	"path/filepath"
	"testing"
	"time"
)

// An FFmpeg RTMP publisher (key checked by the service) is remuxed to MPEG-TS and read through the
// fan-out listener; a wrong key is refused. The publisher then reconnects (its RTMP timestamps
// restart at zero) and the reader's timeline runs on.
func TestRTMPPublishReadViaFanout(t *testing.T) {
	requireFFmpeg(t)
	t.Parallel()
	p := startPlane(t, serviceVerdicts)
	sid, port := p.listen("rtmp")
	url := fmt.Sprintf("rtmp://127.0.0.1:%d/live/x?key=k", port)

	enc := encoder(t, "flv", url)
	up := p.wait(10*time.Second, isEv("publisher_up", "name", "live/x"))
	if up["proto"] != "rtmp" || up["server_id"] != sid {
		t.Errorf("publisher_up: %v", up)
	}
	connect := p.wait(time.Second, isEv("connect", "name", "live/x"))
	if connect["key"] != "k" {
		t.Errorf("connect: %v", connect)
	}

	bad := encoder(t, "flv", fmt.Sprintf("rtmp://127.0.0.1:%d/live/y?key=wrong", port))
	p.wait(5*time.Second, isEv("refused", "name", "live/y", "reason", "bad_passphrase"))
	if err := waitExit(t, bad, 10*time.Second); err == nil {
		t.Errorf("FFmpeg with a wrong key exited 0")
	}
	if c, err := dial(p.fanout, "read/"+sid+"/live/y", ""); err == nil {
		c.Close()
		t.Errorf("reader of a refused RTMP publisher was accepted")
	}

	out := filepath.Join(t.TempDir(), "rtmp.ts")
	rd, rdErr := ffReader(t, srtURL(p.fanout, "read/"+sid+"/live/x"), out)
	ru := p.wait(5*time.Second, isEv("reader_up", "name", "live/x"))
	if ru["proto"] != "rtmp" || ru["via"] != "fanout" {
		t.Errorf("reader_up: %v", ru)
	}
	time.Sleep(3 * time.Second)
	enc.Process.Kill()
	_ = enc.Wait()
	p.wait(5*time.Second, isEv("publisher_lost", "name", "live/x"))
	time.Sleep(time.Second)
	enc2 := encoder(t, "flv", url)
	p.wait(5*time.Second, isEv("publisher_back", "name", "live/x"))
	time.Sleep(3 * time.Second)

	st := p.find(func(ev event) bool {
		if ev["ev"] != "stats" {
			return false
		}
		for _, c := range ev["conns"].([]any) {
			if m := c.(map[string]any); m["proto"] == "rtmp" && m["role"] == "publish" && m["bytes"].(float64) > 0 {
				return m["bitrate_kbits"].(float64) > 0
			}
		}
		return false
	})
	if st == nil {
		t.Errorf("no stats with an RTMP publisher's bytes and bitrate")
	}

	enc2.Process.Kill()
	_ = enc2.Wait()
	p.send(event{"op": "drop", "server_id": sid, "name": "live/x"})
	p.wait(5*time.Second, isEv("contribution_ended", "name", "live/x", "reason", "dropped"))
	if err := waitExit(t, rd, 10*time.Second); err != nil {
		t.Logf("reader: %v %s", err, rdErr)
	}
	pkts := checkStartsAtKeyframe(t, out, 100)
	dts := make([]float64, len(pkts))
	for i, pk := range pkts {
		dts[i] = pk.dts
	}
	checkContinuous(t, "video DTS", dts, 0.5)
	apts := audioPTS(t, out)
	if len(apts) < 100 {
		t.Errorf("%d audio packets", len(apts))
	}
	checkContinuous(t, "audio PTS", apts, 0.5)
	if a := audioCodec(t, out); a != "aac" {
		t.Errorf("audio %q", a)
	}
}
