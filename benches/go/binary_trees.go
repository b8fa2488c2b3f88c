// binary_trees N VARIANT: Benchmarks Game binary-trees (stretch tree N+1, long-lived tree N,
// depths 4, 6, .. N with 2^(N-d+4) trees each). VARIANT serial: one goroutine runs the depth
// loop; goroutines: one goroutine per depth (the Benchmarks Game's Go program), check lines
// printed in order once all have finished. GOMAXPROCS is Go's default (the machine's cores).
// Prints the check lines and goro-bench's RESULT line. Run: go run binary_trees.go peak.go 18 serial
package main

import (
	"fmt"
	"os"
	"strconv"
	"sync"
	"time"
)

const minDepth = 4

type node struct {
	left, right *node
}

func bottomUp(depth int) *node {
	if depth <= 0 {
		return &node{}
	}
	return &node{bottomUp(depth - 1), bottomUp(depth - 1)}
}

func (n *node) check() uint64 {
	if n.left == nil {
		return 1
	}
	return 1 + n.left.check() + n.right.check()
}

func oneDepth(depth int, iterations uint64) uint64 {
	var check uint64
	for i := uint64(0); i < iterations; i++ {
		check += bottomUp(depth).check()
	}
	return check
}

func main() {
	n := 18
	variant := "serial"
	if len(os.Args) > 1 {
		n, _ = strconv.Atoi(os.Args[1])
	}
	if len(os.Args) > 2 {
		variant = os.Args[2]
	}
	if variant != "serial" && variant != "goroutines" {
		fmt.Fprintf(os.Stderr, "binary_trees: unknown variant %s (serial, goroutines)\n", variant)
		os.Exit(2)
	}
	start := time.Now()
	maxDepth := n
	if maxDepth < minDepth+2 {
		maxDepth = minDepth + 2
	}
	var checksum uint64
	stretch := maxDepth + 1
	check := bottomUp(stretch).check()
	fmt.Printf("stretch tree of depth %d\t check: %d\n", stretch, check)
	checksum += check
	longLived := bottomUp(maxDepth)

	var depths []int
	for d := minDepth; d <= maxDepth; d += 2 {
		depths = append(depths, d)
	}
	checks := make([]uint64, len(depths))
	iterations := func(depth int) uint64 { return 1 << uint(maxDepth-depth+minDepth) }
	if variant == "serial" {
		for i, d := range depths {
			checks[i] = oneDepth(d, iterations(d))
		}
	} else {
		var wg sync.WaitGroup
		for i, d := range depths {
			wg.Add(1)
			go func(i, d int) {
				defer wg.Done()
				checks[i] = oneDepth(d, iterations(d))
			}(i, d)
		}
		wg.Wait()
	}
	for i, d := range depths {
		fmt.Printf("%d\t trees of depth %d\t check: %d\n", iterations(d), d, checks[i])
		checksum += checks[i]
	}
	check = longLived.check()
	fmt.Printf("long lived tree of depth %d\t check: %d\n", maxDepth, check)
	checksum += check
	elapsed := time.Since(start)
	fmt.Printf("RESULT binary_trees go variant=%s n=%d checksum=%d total_ms=%.1f vmhwm_kib=%d\n",
		variant, n, checksum, float64(elapsed.Nanoseconds())/1e6, peakKiB())
}
