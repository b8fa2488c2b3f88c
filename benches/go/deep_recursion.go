// deep_recursion D R: recursion to depth D with ~128-byte frames, R times in a fresh goroutine
// each (its 8 KiB stack is grown by copying every time), then R times in one goroutine whose
// stack is already grown (one untimed recursion first).
// Prints goro-bench's RESULT line. Run: go run deep_recursion.go 100000 100
package main

import (
	"fmt"
	"os"
	"strconv"
	"time"
)

const frameWords = 12

//go:noinline
func recurse(depth uint32) uint64 {
	var frame [frameWords]uint64
	slot := depth % frameWords
	frame[slot] = uint64(depth)
	if depth == 0 {
		return frame[0]
	}
	return recurse(depth-1) + frame[slot]
}

func main() {
	depth, reps := 100000, 100
	if len(os.Args) > 1 {
		depth, _ = strconv.Atoi(os.Args[1])
	}
	if len(os.Args) > 2 {
		reps, _ = strconv.Atoi(os.Args[2])
	}
	d := uint32(depth)
	var sum uint64
	start := time.Now()
	for i := 0; i < reps; i++ {
		done := make(chan uint64)
		go func() { done <- recurse(d) }()
		sum = <-done
	}
	fresh := time.Since(start)
	// The warm half: one untimed recursion grows the goroutine's stack, then reps timed ones.
	done := make(chan uint64)
	var warmTime time.Duration
	go func() {
		s := recurse(d)
		start := time.Now()
		for i := 0; i < reps; i++ {
			s = recurse(d)
		}
		warmTime = time.Since(start)
		done <- s
	}()
	warm := <-done
	if warm != sum {
		panic("checksum mismatch")
	}
	perRep := func(t time.Duration) float64 { return float64(t.Nanoseconds()) / 1e6 / float64(reps) }
	fmt.Printf("RESULT deep_recursion go depth=%d reps=%d checksum=%d fresh_ms_per_rep=%.3f warm_ms_per_rep=%.3f total_ms=%.1f vmhwm_kib=%d\n",
		depth, reps, sum, perRep(fresh), perRep(warmTime), float64((fresh+warmTime).Nanoseconds())/1e6, statusKiB("VmHWM:"))
}
