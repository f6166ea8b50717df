package main

import (
	"bytes"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/bluenviron/mediacommon/v2/pkg/formats/mpegts"
	tscodecs "github.com/bluenviron/mediacommon/v2/pkg/formats/mpegts/codecs"
)

// synthTS muxes n H.264 access units at 25 fps (an IDR every 25) with mediacommon's writer,
// starting at DTS start (90 kHz).
func synthTS(t *testing.T, n int, start int64) []byte {
	t.Helper()
	var buf bytes.Buffer
	track := &mpegts.Track{Codec: &tscodecs.H264{}}
	w := &mpegts.Writer{W: &buf, Tracks: []*mpegts.Track{track}}
	if err := w.Initialize(); err != nil {
		t.Fatal(err)
	}
	for i := range n {
		nal := []byte{0x41, 0x9a, 0x00}
		au := [][]byte{nal}
		if i%25 == 0 {
			au = [][]byte{{0x67, 0x42, 0xc0, 0x1e}, {0x68, 0xce, 0x3c, 0x80}, {0x65, 0x88, 0x84, 0x00}}
		}
		au[len(au)-1] = append(au[len(au)-1], bytes.Repeat([]byte{0xAA}, 600)...)
		ts := start + int64(i)*3600
		if err := w.WriteH264(track, ts, ts, au); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

// videoDTS lists the DTS (PTS when absent) of each PES start on PID pid.
func videoDTS(b []byte, pid int) []int64 {
	var out []int64
	for i := 0; i+tsPacketSize <= len(b); i += tsPacketSize {
		p := b[i : i+tsPacketSize]
		if int(p[1]&0x1F)<<8|int(p[2]) != pid || p[1]&0x40 == 0 {
			continue
		}
		off := 4
		if p[3]&0x20 != 0 {
			off = 5 + int(p[4])
		}
		if _, dts, ok := pesTimes(p[off:]); ok {
			out = append(out, dts)
		}
	}
	return out
}

func testApp() *App {
	return &App{
		cfg:   Config{GapHold: time.Minute, TakeoverIdle: time.Second, GOPMaxBytes: 8 << 20},
		out:   newEmitter(io.Discard),
		log:   slog.New(slog.NewTextHandler(io.Discard, nil)),
		hubs:  map[hubKey]*Hub{},
		conns: map[string]*connInfo{},
	}
}

func feed(a *App, h *Hub, p *publisher, ts []byte) {
	for len(ts) > 0 {
		n := min(len(ts), tsChunk)
		h.ingest(a, p, bytes.Clone(ts[:n]))
		ts = ts[n:]
	}
}

// The hub's media path, without sockets: GOP cache for a new reader, timestamps continued across a
// publisher restart (33-bit wrap included), and a reader that stops taking data is dropped
// without stalling the publisher or the other reader.
func TestHubMedia(t *testing.T) {
	a := testApp()
	key := hubKey{"s", "n"}
	noClose := func() (func(), error) { return func() {}, nil }
	h, p, err := a.attachPublisher(key, "srt", &connInfo{id: "p1"}, noClose)
	if err != nil {
		t.Fatal(err)
	}
	near := ptsMask - 55*3600 // wraps at frame 55, inside the GOP readers get
	feed(a, h, p, synthTS(t, 60, near))

	// a new reader: PAT, PMT, then the GOP from the last IDR (frame 50)
	var mu sync.Mutex
	var got []byte
	_, r, first, err := a.attachReader(key, &connInfo{id: "r1"}, func() (func([]byte) error, func(), error) {
		return func(b []byte) error { mu.Lock(); got = append(got, b...); mu.Unlock(); return nil }, func() {}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(first) < 2 || pid(first[0]) != 0 || pid(first[0][188:]) != h.ts.pmtPID {
		t.Fatalf("first chunk is not PAT+PMT")
	}
	gop := bytes.Join(first[1:], nil)
	if gop[5]&0x40 == 0 {
		t.Errorf("GOP does not start with a random-access packet")
	}
	d := videoDTS(gop, h.ts.videoPID)
	if len(d) != 10 || d[0] != tsAdd(near, 50*3600) {
		t.Errorf("GOP has %d frames from %d, want 10 from frame 50", len(d), d[0])
	}
	go a.runReader(h, r, first)

	// the publisher goes and another comes back with its clock at 0
	a.publisherGone(h, p, "closed")
	h2, p2, err := a.attachPublisher(key, "srt", &connInfo{id: "p2"}, noClose)
	if err != nil || h2 != h {
		t.Fatalf("publisher back: %v", err)
	}
	if h.gaps != 1 {
		t.Errorf("gaps %d", h.gaps)
	}
	feed(a, h, p2, synthTS(t, 30, 0))

	// a stalled reader overflows and goes; the publisher and the other reader go on
	stall := make(chan struct{})
	defer close(stall)
	_, slow, sfirst, err := a.attachReader(key, &connInfo{id: "r2"}, func() (func([]byte) error, func(), error) {
		return func([]byte) error { <-stall; return nil }, func() {}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	go a.runReader(h, slow, sfirst)
	startFeed := time.Now()
	bulk := synthTS(t, 500, 0) // content irrelevant here: only volume (over 2048 payloads)
	for range 12 {
		feed(a, h, p2, bulk)
		// as a live publisher would, leave the healthy reader time to drain
		for wait := time.Now().Add(time.Second); len(r.q) > 0 && time.Now().Before(wait); {
			time.Sleep(time.Millisecond)
		}
	}
	if el := time.Since(startFeed); el > 5*time.Second {
		t.Errorf("publisher stalled: %v", el)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		h.mu.Lock()
		_, still := h.readers[slow]
		_, fast := h.readers[r]
		h.mu.Unlock()
		if !fast {
			t.Fatalf("the fast reader was dropped")
		}
		if !still {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the stalled reader was not dropped")
		}
		time.Sleep(10 * time.Millisecond)
	}

	// the fast reader's timeline: continuous through the wrap and the restart
	time.Sleep(200 * time.Millisecond)
	mu.Lock()
	dts := videoDTS(got, h.ts.videoPID)
	mu.Unlock()
	if len(dts) < 40 {
		t.Fatalf("reader got %d frames", len(dts))
	}
	for i := 1; i < 40; i++ {
		if step := tsDiff(dts[i], dts[i-1]); step != 3600 {
			t.Fatalf("DTS step %d at frame %d (%d -> %d)", step, i, dts[i-1], dts[i])
		}
	}
}
