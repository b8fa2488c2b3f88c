// fresh_stacks N KIB: N goroutines alive at once, each uses KIB KiB of stack once (1 KiB frames)
// and then blocks on a channel receive; time until all have blocked, per goroutine. Prints
// goro-bench's RESULT line. Run: go run fresh_stacks.go peak.go 100000 4
package main

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

//go:noinline
func useStack(kib int) uint64 {
	var frame [1024]byte
	frame[0] = byte(kib)
	frame[1] = byte(kib)
	if kib <= 1 {
		return uint64(frame[0])
	}
	return useStack(kib-1) + uint64(frame[1])
}

func main() {
	n, kib := 100000, 4
	if len(os.Args) > 2 {
		n, _ = strconv.Atoi(os.Args[1])
		kib, _ = strconv.Atoi(os.Args[2])
	}
	ch := make(chan struct{})
	var used, exited sync.WaitGroup
	used.Add(n)
	exited.Add(n)
	sums := make([]uint64, n)
	start := time.Now()
	for i := 0; i < n; i++ {
		go func(i int) {
			sums[i] = useStack(kib)
			used.Done()
			<-ch
			exited.Done()
		}(i)
	}
	used.Wait()
	elapsed := time.Since(start)
	close(ch)
	exited.Wait()
	var sum, want uint64
	for _, s := range sums {
		sum += s
	}
	for k := 1; k <= kib; k++ {
		want += uint64(k & 0xff)
	}
	if sum != want*uint64(n) {
		fmt.Fprintf(os.Stderr, "fresh_stacks: checksum %d, expected %d\n", sum, want*uint64(n))
		os.Exit(1)
	}
	fmt.Printf("RESULT fresh_stacks go n=%d kib=%d ns_per_goroutine=%.0f total_ms=%.1f vmhwm_kib=%d\n",
		n, kib, float64(elapsed.Nanoseconds())/float64(n), float64(elapsed.Nanoseconds())/1e6, peakKiB())
}
