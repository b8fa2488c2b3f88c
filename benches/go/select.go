// select N PROCS: 4 producers on 4 channels (cap 16), one consumer selecting over all 4.
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
	start := time.Now()
	chans := make([]chan int, 4)
	for p := 0; p < 4; p++ {
		chans[p] = make(chan int, 16)
		go func(p int, c chan int) {
			for i := 0; i < n/4; i++ {
				c <- p + 4*i
			}
			close(c)
		}(p, chans[p])
	}
	a, b, c, d := chans[0], chans[1], chans[2], chans[3]
	sum, open := 0, 4
	for open > 0 {
		var v int
		var ok bool
		select {
		case v, ok = <-a:
			if !ok {
				a = nil
			}
		case v, ok = <-b:
			if !ok {
				b = nil
			}
		case v, ok = <-c:
			if !ok {
				c = nil
			}
		case v, ok = <-d:
			if !ok {
				d = nil
			}
		}
		if ok {
			sum += v
		} else {
			open--
		}
	}
	elapsed := time.Since(start)
	fmt.Printf("RESULT select go n=%d gomaxprocs=%d sum=%d ns_per_op=%.1f total_ms=%.1f vmhwm_kib=%d\n",
		n, procs, sum, float64(elapsed.Nanoseconds())/float64(n), float64(elapsed.Nanoseconds())/1e6, peakKiB())
}
