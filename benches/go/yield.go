// yield N: two goroutines on one P call runtime.Gosched N times each.
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
	runtime.GOMAXPROCS(1)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		for i := 0; i < n; i++ {
			runtime.Gosched()
		}
		wg.Done()
	}()
	start := time.Now()
	for i := 0; i < n; i++ {
		runtime.Gosched()
	}
	elapsed := time.Since(start)
	wg.Wait()
	fmt.Printf("RESULT yield go n=%d gomaxprocs=1 ns_per_yield=%.1f total_ms=%.1f vmhwm_kib=%d\n",
		n, float64(elapsed.Nanoseconds())/float64(2*n), float64(elapsed.Nanoseconds())/1e6, peakKiB())
}
