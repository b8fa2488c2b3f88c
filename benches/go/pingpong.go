// pingpong N PROCS: N round trips over two unbuffered channels.
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"
)

func main() {
	n, _ := strconv.Atoi(os.Args[1])
	procs, _ := strconv.Atoi(os.Args[2])
	runtime.GOMAXPROCS(procs)
	ping, pong := make(chan int), make(chan int)
	go func() {
		for v := range ping {
			pong <- v + 1
		}
	}()
	start := time.Now()
	v := 0
	for i := 0; i < n; i++ {
		ping <- v
		v = <-pong
	}
	elapsed := time.Since(start)
	fmt.Printf("RESULT pingpong go variant=%d n=%d gomaxprocs=%d ns_per_roundtrip=%.1f total_ms=%.1f vmhwm_kib=%d\n",
		procs, n, procs, float64(elapsed.Nanoseconds())/float64(n), float64(elapsed.Nanoseconds())/1e6, peakKiB())
}
