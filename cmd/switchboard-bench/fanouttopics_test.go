package main

import (
	"sync/atomic"
	"testing"
)

// The topic checker against frames made up to break each rule it enforces.
func TestTopicSubChecks(t *testing.T) {
	var complete atomic.Int64
	s := &topicSub{topic: "dashboards.1", want: 3, d: newDelivery(10, 1, 10), sampleEvery: 1,
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
}
