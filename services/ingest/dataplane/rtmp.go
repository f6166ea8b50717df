package main

// RTMP servers (gortmplib): a publisher is remuxed into MPEG-TS (mediacommon's writer) and fed
// into the same hub as an SRT contribution, so it is read through the fan-out listener.

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/bluenviron/gortmplib"
	"github.com/bluenviron/gortmplib/pkg/amf0"
	rcodecs "github.com/bluenviron/gortmplib/pkg/codecs"
	"github.com/bluenviron/gortmplib/pkg/message"
	"github.com/bluenviron/mediacommon/v2/pkg/formats/mpegts"
	tscodecs "github.com/bluenviron/mediacommon/v2/pkg/formats/mpegts/codecs"
)

const rtmpIOTimeout = 10 * time.Second

// rtmpStatus is the onStatus code a refused publisher gets.
var rtmpStatus = map[string]string{
	"bad_stream_id":  "NetStream.Publish.BadName",
	"unknown_stream": "NetStream.Publish.BadName",
	"duplicate":      "NetStream.Publish.BadName",
}

func (a *App) serveRTMP(s *server) {
	for {
		nc, err := s.tcpLn.Accept()
		if err != nil {
			return
		}
		go a.handleRTMP(nc, s)
	}
}

func writeStatus(sc *gortmplib.ServerConn, level, code, desc string) error {
	return sc.Write(&message.CommandAMF0{
		ChunkStreamID:   5,
		MessageStreamID: 0x1000000,
		Name:            "onStatus",
		Arguments:       []any{nil, amf0Object(level, code, desc)},
	})
}

func (a *App) handleRTMP(nc net.Conn, s *server) {
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(rtmpIOTimeout))
	sc := &gortmplib.ServerConn{RW: nc}
	if err := sc.Initialize(); err != nil {
		return
	}
	if err := sc.AcceptConn(); err != nil {
		return
	}
	name := strings.Trim(sc.URL.Path, "/")
	key := sc.URL.Query().Get("key")
	ci := &connInfo{id: a.nextID("c"), serverID: s.id, via: "server", proto: "rtmp", name: name,
		role: "publish", remote: nc.RemoteAddr().String(), bytes: sc.BytesReceived}
	refuse := func(reason string) {
		code, known := rtmpStatus[reason]
		if !known {
			code = "NetStream.Publish.Denied"
		}
		_ = writeStatus(sc, "error", code, reason)
		a.refused(ci, reason, name)
	}
	if !sc.Publish {
		ci.role = "read"
		_ = writeStatus(sc, "error", "NetStream.Play.Failed", "read through the SRT fan-out")
		a.refused(ci, "bad_stream_id", name)
		return
	}
	if name == "" {
		refuse("bad_stream_id")
		return
	}
	v, answered := a.askVerdict(ci, name, key, false)
	switch {
	case !answered:
		refuse("timeout")
		return
	case !v.Allow:
		reason := v.Reason
		if reason == "" {
			reason = "forbidden"
		}
		refuse(reason)
		return
	}
	hk := hubKey{s.id, name}
	h, p, err := a.attachPublisher(hk, "rtmp", ci, func() (func(), error) {
		if err := sc.AcceptAction(); err != nil {
			return nil, err
		}
		return func() { _ = nc.Close() }, nil
	})
	if err != nil {
		var r errRefuse
		if errors.As(err, &r) {
			refuse(string(r))
		}
		return
	}
	reason := "closed"
	if err := a.remuxRTMP(sc, nc, h, p); err != nil {
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			reason = "timeout"
		}
		a.log.Info("rtmp_publisher_ended", "conn", ci.id, "error", err.Error())
	}
	_ = nc.Close()
	a.publisherGone(h, p, reason)
}

// tsFeed collects what the MPEG-TS writer writes and hands it to the hub in SRT-sized chunks.
type tsFeed struct {
	buf []byte
}

func (f *tsFeed) Write(b []byte) (int, error) {
	f.buf = append(f.buf, b...)
	return len(b), nil
}

// rtmpStart keeps an RTMP stream's timestamps (which start at 0) clear of the PCR lead.
const rtmpStart = 90000

func ticks(d time.Duration) int64 { return int64(d)*90000/int64(time.Second) + rtmpStart }

func (a *App) remuxRTMP(sc *gortmplib.ServerConn, nc net.Conn, h *Hub, p *publisher) error {
	r := &gortmplib.Reader{Conn: sc}
	if err := r.Initialize(); err != nil {
		return err
	}
	feed := &tsFeed{}
	w := &mpegts.Writer{W: feed}
	type bound struct {
		in  *gortmplib.Track
		out *mpegts.Track
	}
	var tracks []bound
	for _, t := range r.Tracks() {
		var c tscodecs.Codec
		switch codec := t.Codec.(type) {
		case *rcodecs.H264:
			c = &tscodecs.H264{}
		case *rcodecs.H265:
			c = &tscodecs.H265{}
		case *rcodecs.MPEG4Audio:
			c = &tscodecs.MPEG4Audio{Config: *codec.Config}
		case *rcodecs.Opus:
			c = &tscodecs.Opus{ChannelCount: int(codec.IDHeader.ChannelCount)} //nolint:staticcheck // Desc needs the mapping table; the count is enough here
		case *rcodecs.MPEG1Audio:
			c = &tscodecs.MPEG1Audio{}
		default:
			a.log.Warn("rtmp_track_skipped", "codec", fmt.Sprintf("%T", t.Codec))
			continue
		}
		tracks = append(tracks, bound{t, &mpegts.Track{Codec: c}})
	}
	if len(tracks) == 0 {
		return errors.New("no track that MPEG-TS can carry")
	}
	for _, b := range tracks {
		w.Tracks = append(w.Tracks, b.out)
	}
	if err := w.Initialize(); err != nil {
		return err
	}
	var werr error
	flush := func(err error) {
		if err != nil && werr == nil {
			werr = err
		}
		for len(feed.buf) > 0 {
			n := min(len(feed.buf), tsChunk)
			if !h.ingest(a, p, feed.buf[:n]) {
				werr = errors.New("replaced")
			}
			feed.buf = feed.buf[n:]
		}
		feed.buf = feed.buf[:0]
	}
	for _, b := range tracks {
		out := b.out
		switch b.in.Codec.(type) {
		case *rcodecs.H264:
			r.OnDataH264(b.in, func(pts, dts time.Duration, au [][]byte) {
				flush(w.WriteH264(out, ticks(pts), ticks(dts), au))
			})
		case *rcodecs.H265:
			r.OnDataH265(b.in, func(pts, dts time.Duration, au [][]byte) {
				flush(w.WriteH265(out, ticks(pts), ticks(dts), au))
			})
		case *rcodecs.MPEG4Audio:
			r.OnDataMPEG4Audio(b.in, func(pts time.Duration, au []byte) {
				flush(w.WriteMPEG4Audio(out, ticks(pts), [][]byte{au}))
			})
		case *rcodecs.Opus:
			r.OnDataOpus(b.in, func(pts time.Duration, pkt []byte) {
				flush(w.WriteOpus(out, ticks(pts), [][]byte{pkt}))
			})
		case *rcodecs.MPEG1Audio:
			r.OnDataMPEG1Audio(b.in, func(pts time.Duration, frame []byte) {
				flush(w.WriteMPEG1Audio(out, ticks(pts), [][]byte{frame}))
			})
		}
	}
	// the writer emits PAT and PMT only with the first keyframe: send them now too
	if _, err := w.WriteTables(); err == nil {
		flush(nil)
	}
	for {
		_ = nc.SetDeadline(time.Now().Add(rtmpIOTimeout))
		if err := r.Read(); err != nil {
			return err
		}
		if werr != nil && werr.Error() == "replaced" {
			return werr
		}
	}
}

func amf0Object(level, code, desc string) amf0.Object {
	return amf0.Object{
		{Key: "level", Value: level},
		{Key: "code", Value: code},
		{Key: "description", Value: desc},
	}
}
