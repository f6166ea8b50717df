package main

import (
	"math"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// An FFmpeg publisher is killed for 3 s and comes back while an FFmpeg reader keeps running: the
// reader stays connected and its timestamps run on, less the gap. (Killed, it sends no SRT
// shutdown: the new publisher takes over the silent old connection.) Then the publisher stops
// cleanly for longer than -gap-hold (4 s here): the contribution ends and the reader is closed.
func TestPublisherGap(t *testing.T) {
	requireFFmpeg(t)
	t.Parallel()
	p := startPlane(t, allowAll)
	sid, port := p.listen("srt")
	url := srtURL(port, "publisher/gap")

	enc := encoder(t, "mpegts", url)
	p.wait(10*time.Second, isEv("publisher_up", "name", "gap"))
	out := filepath.Join(t.TempDir(), "gap.ts")
	rd, rdErr := ffReader(t, srtURL(p.fanout, "read/"+sid+"/gap"), out)
	p.wait(5*time.Second, isEv("reader_up", "name", "gap"))
	readerStart := time.Now()

	time.Sleep(4 * time.Second)
	_ = enc.Process.Kill()
	_ = enc.Wait()
	lostAt := time.Now()

	time.Sleep(3 * time.Second)
	enc2 := encoder(t, "mpegts", url)
	back := p.wait(5*time.Second, func(ev event) bool {
		return ev["name"] == "gap" && (ev["ev"] == "publisher_back" || ev["ev"] == "publisher_replaced")
	})
	backAt := time.Now()
	gap := back["gap_ms"]
	if back["ev"] == "publisher_replaced" {
		gap = back["idle_ms"]
	}
	if g := gap.(float64); g < 2900 || g > 4500 {
		t.Errorf("%v: gap %v ms, want about 3000", back["ev"], g)
	}

	time.Sleep(4 * time.Second)
	_ = enc2.Process.Signal(syscall.SIGTERM)
	_ = waitExit(t, enc2, 5*time.Second)
	if lost := p.wait(3*time.Second, func(ev event) bool {
		return ev["ev"] == "publisher_lost" && ev["conn"] == back["conn"]
	}); lost["reason"] != "closed" {
		t.Errorf("publisher_lost: %v", lost)
	}
	lost2At := time.Now()
	if n := p.count(isEv("reader_gone", "name", "gap")); n != 0 {
		t.Fatalf("the reader went during the hold")
	}

	ended := p.wait(6*time.Second, isEv("contribution_ended", "name", "gap"))
	if ended["reason"] != "gap" {
		t.Errorf("contribution_ended: %v", ended)
	}
	p.wait(time.Second, isEv("reader_gone", "name", "gap", "reason", "ended"))
	if err := waitExit(t, rd, 10*time.Second); err != nil {
		t.Logf("reader exit: %v: %s", err, rdErr)
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
	got := pkts[len(pkts)-1].dts - pkts[0].dts
	want := lostAt.Sub(readerStart).Seconds() + lost2At.Sub(backAt).Seconds()
	if math.Abs(got-want) > 1.5 {
		t.Errorf("reader's video covers %.2f s, want about %.2f s (the run less the gap)", got, want)
	}
	st := p.find(func(ev event) bool {
		if ev["ev"] != "stats" {
			return false
		}
		for _, c := range ev["contributions"].([]any) {
			if m := c.(map[string]any); m["name"] == "gap" && m["gaps"].(float64) == 1 && m["held"] == true {
				return true
			}
		}
		return false
	})
	if st == nil {
		t.Errorf("no stats with gaps=1 and held=true")
	}
}

// A publisher that lingers without sending is replaced by a new one after -takeover-idle.
func TestTakeover(t *testing.T) {
	t.Parallel()
	p := startPlane(t, allowAll, "-takeover-idle", "500ms")
	_, port := p.listen("srt")
	old, err := dial(port, "publisher/take", "")
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	first := p.wait(3*time.Second, isEv("publisher_up", "name", "take"))
	if _, err := old.Write(make([]byte, 188)); err != nil {
		t.Fatal(err)
	}
	// sending: a second publisher is a duplicate
	if c, err := dial(port, "publisher/take", ""); err == nil {
		c.Close()
		t.Fatalf("second publisher accepted while the first sends")
	}
	p.wait(3*time.Second, isEv("refused", "name", "take", "reason", "duplicate"))

	time.Sleep(700 * time.Millisecond)
	c, err := dial(port, "publisher/take", "")
	if err != nil {
		t.Fatalf("takeover refused: %v", err)
	}
	defer c.Close()
	rep := p.wait(3*time.Second, isEv("publisher_replaced", "name", "take"))
	if rep["idle_ms"].(float64) < 500 || rep["old_remote"] != first["remote"] {
		t.Errorf("publisher_replaced: %v", rep)
	}
	lost := p.wait(3*time.Second, isEv("publisher_lost", "name", "take", "reason", "replaced"))
	if lost["conn"] != first["conn"] {
		t.Errorf("publisher_lost names conn %v, want the old %v", lost["conn"], first["conn"])
	}
}
