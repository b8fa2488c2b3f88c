// spawn N PROCS: spawn N goroutines doing trivial work and wait for all; goro-bench's RESULT line.
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"sync"
	"time"
)

func main() {
	n, _ := strconv.Atoi(os.Args[1])
	procs, _ := strconv.Atoi(os.Args[2])
	runtime.GOMAXPROCS(procs)
	start := time.Now()
	var wg sync.WaitGroup
	wg.Add(n)
	for i := 0; i < n; i++ {
		go func() { wg.Done() }()
	}
	wg.Wait()
	elapsed := time.Since(start)
	fmt.Printf("RESULT spawn go n=%d gomaxprocs=%d ns_per_spawn=%.1f total_ms=%.1f vmhwm_kib=%d\n",
		n, procs, float64(elapsed.Nanoseconds())/float64(n), float64(elapsed.Nanoseconds())/1e6, peakKiB())
}
