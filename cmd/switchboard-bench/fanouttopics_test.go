package main

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"unicode/utf8"
)

// The topic checker against frames made up to break each rule it enforces.
func TestTopicSubChecks(t *testing.T) {
	var complete atomic.Int64
	s := &topicSub{topic: "dashboards.1", want: 3, d: newDelivery(32, 1, 32), sampleEvery: 1,
		complete: &complete, answer: make(chan string, 1)}
	frame := func(b string) { s.onFrame([]byte(b), 2_000) }
	frame(`{"pkg_id":10,"req_id":"x","status_code":0,"data":{"topic":"dashboards.1","seq":5,"epoch":"e1","recovered":false},"meta":null,"msg":null}`)
	if got := <-s.answer; got != "" || s.last != 5 || s.epoch != "e1" {
		t.Fatalf("answer: %q, position %d %q", got, s.last, s.epoch)
	}
	frame(`{"pkg_id":100,"req_id":"z","data":{"seq":0,"ts":1000},"topic":"dashboards.1","seq":6,"epoch":"e1"}`)
	frame(`{"pkg_id":100,"req_id":"z","data":{"seq":0,"ts":1000},"topic":"dashboards.1","seq":6,"epoch":"e1"}`) // repeated
	frame(`{"pkg_id":100,"req_id":"z","data":{"seq":4,"ts":1000},"topic":"dashboards.1","seq":8,"epoch":"e1"}`) // 7 skipped
	frame(`{"pkg_id":100,"req_id":"z","data":{"seq":2,"ts":1000},"topic":"dashboards.1","seq":9,"epoch":"e1"}`) // producer order broken
	frame(`{"pkg_id":100,"req_id":"z","data":{"seq":3,"ts":1000},"topic":"dashboards.2","seq":1,"epoch":"e9"}`) // another topic
	frame(`{"pkg_id":100,"req_id":"z","data":{"seq":7,"ts":1000},"topic":"dashboards.1","seq":1,"epoch":"e2"}`) // stream restarted
	frame(`{"pkg_id":100,"req_id":"z","data":{"w":1}}`)                                                         // to everyone: not counted
	frame(`not json`)
	if s.seqRepeats != 1 || s.seqGaps != 1 || s.wrongTopic != 1 || s.epochs != 1 || s.undecodable != 1 {
		t.Fatalf("repeats %d gaps %d wrong %d epochs %d undecodable %d", s.seqRepeats, s.seqGaps, s.wrongTopic, s.epochs, s.undecodable)
	}
	if s.d.dup != 1 || s.d.ooo != 1 || s.d.unique != 4 {
		t.Fatalf("dup %d ooo %d unique %d", s.d.dup, s.d.ooo, s.d.unique)
	}
	if complete.Load() != 1 { // unique went 1, 2, 3 (= want: complete once), 4
		t.Fatalf("complete counted %d times, want once", complete.Load())
	}

	// What a scanner of the bytes could misread. Good frames, in another order, with
	// whitespace and escapes, and decoys in other members: each one taken once, in order.
	for _, f := range []string{
		` { "epoch" : "e2" , "seq" : 2 ,` + "\n\t" + `"topic" : "dashboards.1" , "data" : { "ts" : 1000 , "seq" : 8 } , "pkg_id" : 100 } ` + "\r\n",
		`{"topic":"dashboards.\u0031","seq":3,"epoch":"\u0065\u0032","data":{"seq":9,"ts":1000}}`,       // escaped strings
		`{"to\u0070ic":"dashboards.1","s\u0065q":4,"epoch":"e2","d\u0061ta":{"s\u0065q":10,"ts":1000}}`, // escaped keys
		`{"data":{"pad":"\"seq\":99,\"topic\":\"dashboards.2\"","seq":11,"ts":1000,"x":{"seq":98}},"meta":{"topic":"dashboards.2","seq":97,"epoch":"e9"},"topic":"dashboards.1","seq":5,"epoch":"e2"}`,
		`{"topic":"dashboards.2","seq":1,"epoch":"e9","topic":"dashboards.1","seq":6,"epoch":"e2","data":{"seq":12,"ts":1000}}`, // duplicates: the last counts
		`{"topic":"dashboards.1","seq":7,"epoch":"e2","data":{"seq":13,"ts":1000,"big":123456789012345678901234567890,"f":-1.5e-7,"a":[1,{"b":[]},"c",true,false,null]}}`,
	} {
		frame(f)
	}
	if s.seqRepeats != 1 || s.seqGaps != 1 || s.wrongTopic != 1 || s.epochs != 1 || s.undecodable != 1 || s.d.unique != 10 || s.last != 7 {
		t.Fatalf("good frames: repeats %d gaps %d wrong %d epochs %d undecodable %d unique %d last %d",
			s.seqRepeats, s.seqGaps, s.wrongTopic, s.epochs, s.undecodable, s.d.unique, s.last)
	}
	// Each breaks one rule where a decoy elsewhere in the frame says otherwise.
	frame(`{"meta":{"topic":"dashboards.1"},"topic":"dashboards.\u0032","seq":8,"epoch":"e2","data":{"seq":14,"ts":1000}}`) // another topic
	frame(`{"data":{"pad":"\"seq\":8","seq":15,"ts":1000},"topic":"dashboards.1","seq":9,"epoch":"e2"}`)                    // 8 skipped
	frame(`{"data":{"pad":"x","seq":16,"ts":1000,"epoch":"e2"},"topic":"dashboards.1","seq":10,"epoch":"e\u0033"}`)         // restarted
	frame(`{"data":{"x":{"seq":17},"seq":15,"ts":1000},"topic":"dashboards.1","seq":11,"epoch":"e3"}`)                      // duplicate
	if s.seqRepeats != 1 || s.seqGaps != 2 || s.wrongTopic != 2 || s.epochs != 2 || s.d.dup != 2 || s.d.unique != 12 {
		t.Fatalf("decoys: repeats %d gaps %d wrong %d epochs %d dup %d unique %d", s.seqRepeats, s.seqGaps, s.wrongTopic, s.epochs, s.d.dup, s.d.unique)
	}
	// Frames that are not JSON, or whose fields have the wrong type, count as undecodable.
	for _, f := range []string{
		``, ` `, `{`, `{"topic":"dashboards.1"`, `{"topic":"dashboards.1"}x`, `{"topic":"dashboards.1"}{}`,
		`{"topic":"dashboards.1","seq":12,}`, `{"topic" "dashboards.1"}`, `{"topic":"dashboards.1" "seq":12}`,
		`{"topic":"dashboards.1","seq":1.5}`, `{"topic":"dashboards.1","seq":-1}`, `{"topic":"dashboards.1","seq":1e1}`,
		`{"topic":"dashboards.1","seq":"12"}`, `{"topic":"dashboards.1","seq":012}`, `{"topic":"dashboards.1","seq":18446744073709551616}`,
		`{"topic":1}`, `{"topic":"dashboards.1","data":[]}`, `{"topic":"dashboards.1","data":{"seq":"1"}}`,
		`{"topic":"dashboards.1","data":{"ts":9223372036854775808}}`, `{"topic":"dashboards.1","epoch":true}`,
		`{"topic":"dash` + "\n" + `boards.1"}`, `{"topic":"dashboards.1\x"}`, `{"topic":"dashboards.1\u00zz"}`,
		`{"topic":"dashboards.1","x":tru}`, `{"topic":"dashboards.1","x":[1,]}`, `{"topic":"dashboards.1","x":-}`,
		`{"topic":"dashboards.1","x":1.}`, `{"topic":"dashboards.1","x":1e}`, `{"status_code":"0"}`, `{"msg":5}`,
		`[]`, `"x"`, `1`, `nul`, `{"a":` + strings.Repeat("[", maxDepth+1) + strings.Repeat("]", maxDepth+1) + `}`,
	} {
		before := s.undecodable
		frame(f)
		if s.undecodable != before+1 {
			t.Errorf("%.80q: not counted as undecodable", f)
		}
	}
	if s.seqRepeats != 1 || s.seqGaps != 2 || s.wrongTopic != 2 || s.epochs != 2 || s.d.dup != 2 || s.d.unique != 12 || s.last != 11 {
		t.Fatalf("undecodable frames moved the account")
	}
}

// refFrame is the frame as json.Unmarshal reads it: the reference of topicFrame.scan.
type refFrame struct {
	StatusCode *int    `json:"status_code"`
	Msg        *string `json:"msg"`
	Topic      string  `json:"topic"`
	Seq        uint64  `json:"seq"`
	Epoch      string  `json:"epoch"`
	Data       struct {
		Seq   int64  `json:"seq"`
		TS    int64  `json:"ts"`
		Epoch string `json:"epoch"`
	} `json:"data"`
}

// foldedKey reports whether v holds, at any depth, a key that json.Unmarshal would match to a
// field name without being it ("Topic"): scan matches exactly.
func foldedKey(v any) bool {
	switch v := v.(type) {
	case map[string]any:
		for k, x := range v {
			for _, name := range []string{"status_code", "msg", "topic", "seq", "epoch", "data", "ts"} {
				if k != name && strings.EqualFold(k, name) {
					return true
				}
			}
			if foldedKey(x) {
				return true
			}
		}
	case []any:
		for _, x := range v {
			if foldedKey(x) {
				return true
			}
		}
	}
	return false
}

// checkScan compares scan with json.Unmarshal on b.
func checkScan(t *testing.T, b []byte) {
	var v any
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber() // 1e700 is a valid number
	if !utf8.Valid(b) || d.Decode(&v) == nil && foldedKey(v) {
		return // the two documented differences
	}
	var ref refFrame
	refErr := json.Unmarshal(b, &ref)
	var f topicFrame
	ok := f.scan(b)
	if ok != (refErr == nil) {
		t.Fatalf("%q: scan %v, json.Unmarshal %v", b, ok, refErr)
	}
	if !ok {
		return
	}
	got := refFrame{Topic: string(f.topic), Seq: f.seq, Epoch: string(f.epoch)}
	if f.hasStatus {
		st := int(f.status)
		got.StatusCode = &st
	}
	if f.hasMsg {
		m := string(f.msg)
		got.Msg = &m
	}
	got.Data.Seq, got.Data.TS, got.Data.Epoch = f.dataSeq, f.dataTS, string(f.dataEpoch)
	if !reflect.DeepEqual(got, ref) {
		t.Fatalf("%q: scan %+v, json.Unmarshal %+v", b, got, ref)
	}
}

// scanSeeds are frames of every kind the tests above use.
var scanSeeds = []string{
	`{"pkg_id":10,"req_id":"x","status_code":0,"data":{"topic":"dashboards.1","seq":5,"epoch":"e1","recovered":false},"meta":null,"msg":null}`,
	`{"pkg_id":10,"req_id":"x","status_code":3,"data":null,"meta":null,"msg":"Permission denied"}`,
	`{"pkg_id":100,"req_id":"z","data":{"seq":0,"ts":1000},"topic":"dashboards.1","seq":6,"epoch":"e1"}`,
	` { "epoch" : "e2" , "seq" : 2 , "topic" : "dashboards.1" , "data" : { "ts" : 1000 , "seq" : 8 } } `,
	`{"to\u0070ic":"dashboards.\u0031","seq":3,"epoch":"\u0065\ud83d\ude00","data":{"s\u0065q":9,"ts":-1000}}`,
	`{"data":{"pad":"\"seq\":99","seq":11,"ts":1000,"x":{"seq":98}},"meta":{"topic":"x","seq":97},"topic":"t","seq":5,"epoch":"e2"}`,
	`{"topic":"a","topic":null,"seq":1,"seq":null,"status_code":1,"status_code":null,"msg":"m","msg":null,"data":{"seq":1},"data":null}`,
	`{"x":[1,-0,0.5,-1.5e-7,1E+3,true,false,null,"s",{"a":[]},[]],"data":{"seq":9223372036854775807,"ts":-9223372036854775808}}`,
	`{"seq":18446744073709551615}`, `{"seq":18446744073709551616}`, `{"seq":-0}`, `{"status_code":-0}`,
	`null`, `[]`, `{}`, `{"Topic":"x"}`, `{"topic":"a\u00e9\n\t\/\b\f\r\"\\"}`, `{"topic":"é"}`,
}

func TestTopicFrameScanMatchesUnmarshal(t *testing.T) {
	for _, s := range scanSeeds {
		checkScan(t, []byte(s))
	}
	for _, b := range benchFrames(4, 100, "dashboards.1") {
		checkScan(t, b)
	}
}

func FuzzTopicFrameScan(f *testing.F) {
	for _, s := range scanSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(checkScan)
}

// benchFrames are n broadcast frames as the server sends them (transport/codec.go), payloads
// of size bytes from producer 0: data.seq i, the topic's seq i+1 (or, with topic "", frames to
// every connection).
func benchFrames(n, size int, topic string) [][]byte {
	frames := make([][]byte, n)
	var data []byte
	for i := range frames {
		data = payload(data, i, 1_000, size)
		f := `{"pkg_id":100,"req_id":"00000000-0000-0000-0000-000000000000","data":` + string(data)
		if topic != "" {
			f += `,"topic":"` + topic + `","seq":` + strconv.Itoa(i+1) + `,"epoch":"1765000000000-0"`
		}
		frames[i] = []byte(f + "}")
	}
	return frames
}

// The per-frame cost of a topic subscriber's checks, next to a broadcast-to-all subscriber's.
func BenchmarkSubscriberFrame(b *testing.B) {
	const cycle = 1024
	b.Run("topic", func(b *testing.B) {
		frames := benchFrames(cycle, 100, "dashboards.1")
		var complete atomic.Int64
		var s *topicSub
		b.ReportAllocs()
		for i := range b.N {
			if i%cycle == 0 {
				s = &topicSub{topic: "dashboards.1", want: cycle, d: newDelivery(cycle, 1, cycle), sampleEvery: 1,
					complete: &complete, answered: true, epoch: "1765000000000-0"}
			}
			s.onFrame(frames[i%cycle], 2_000)
		}
		if s.seqGaps+s.seqRepeats+s.wrongTopic+s.epochs+s.undecodable+s.d.dup+s.d.ooo != 0 {
			b.Fatal("the frames broke a rule")
		}
	})
	b.Run("all", func(b *testing.B) {
		frames := benchFrames(cycle, 100, "")
		var complete atomic.Int64
		var s *subscriber
		b.ReportAllocs()
		for i := range b.N {
			if i%cycle == 0 {
				s = &subscriber{d: newDelivery(cycle, 1, cycle), sampleEvery: 1, complete: &complete}
			}
			s.onData(frames[i%cycle])
		}
		if s.d.dup+s.d.ooo != 0 {
			b.Fatal("the frames broke a rule")
		}
	})
}
