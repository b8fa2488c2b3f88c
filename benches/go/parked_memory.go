// parked_memory N: N goroutines blocked on one channel's receive at once; RSS growth per
// goroutine. Prints goro-bench's RESULT line. Run: go run parked_memory.go 100000
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
	n := 100000
	if len(os.Args) > 1 {
		n, _ = strconv.Atoi(os.Args[1])
	}
	runtime.GC()
	before, ptesBefore := statusKiB("VmRSS:"), statusKiB("VmPTE:")
	start := time.Now()
	ch := make(chan struct{})
	var started, exited sync.WaitGroup
	started.Add(n)
	exited.Add(n)
	for i := 0; i < n; i++ {
		go func() {
			started.Done()
			<-ch
			exited.Done()
		}()
	}
	started.Wait()
	parkedAt := time.Now()
	time.Sleep(50 * time.Millisecond)
	grown, ptes := statusKiB("VmRSS:")-before, statusKiB("VmPTE:")-ptesBefore
	time.Sleep(5*time.Second - time.Since(parkedAt))
	grownLong := statusKiB("VmRSS:") - before
	close(ch)
	exited.Wait()
	total := time.Since(start)
	fmt.Printf("RESULT parked_memory go n=%d reached=%d bytes_per_task=%d pte_bytes_per_task=%d bytes_per_task_long=%d total_ms=%.1f vmhwm_kib=%d\n",
		n, n, grown*1024/uint64(n), ptes*1024/uint64(n), grownLong*1024/uint64(n), float64(total.Nanoseconds())/1e6, statusKiB("VmHWM:"))
}
