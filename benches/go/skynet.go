// skynet N PROCS: a 10-ary tree of goroutines with N leaves summing over unbuffered channels.
package main

import (
	"fmt"
	"os"
	"runtime"
	"strconv"
	"time"
)

func skynet(c chan int, num, size, div int) {
	if size == 1 {
		c <- num
		return
	}
	rc := make(chan int)
	for i := 0; i < div; i++ {
		go skynet(rc, num+i*(size/div), size/div, div)
	}
	sum := 0
	for i := 0; i < div; i++ {
		sum += <-rc
	}
	c <- sum
}

func main() {
	n, _ := strconv.Atoi(os.Args[1])
	procs, _ := strconv.Atoi(os.Args[2])
	runtime.GOMAXPROCS(procs)
	start := time.Now()
	c := make(chan int)
	go skynet(c, 0, n, 10)
	sum := <-c
	elapsed := time.Since(start)
	fmt.Printf("RESULT skynet go n=%d gomaxprocs=%d sum=%d total_ms=%.1f vmhwm_kib=%d\n",
		n, procs, sum, float64(elapsed.Nanoseconds())/1e6, peakKiB())
}
