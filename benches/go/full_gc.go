// full_gc MB PROCS: the time of one forced full collection (runtime.GC) of a heap of MB
// megabytes (10^6 bytes) of small objects, all live, at GOMAXPROCS=PROCS. The same heap as
// goro-bench's full_gc.rs: half the payload in lists of 4096 nodes of 16 bytes, half in complete
// binary trees of depth 16 with nodes of 24 bytes (100 MB: 763 lists and 16 trees). One
// untimed runtime.GC() settles the heap first; gc_ms is the wall time of the second. stw_us
// lists the pause total of each cycle the timed call ran (MemStats.PauseNs: Go records a cycle's
// two pauses as one entry; goro's line lists its two pauses apart).
// Run: go run full_gc.go peak.go 100 2
package main

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"strconv"
	"time"
)

const listLen = 4096
const treeDepth = 16
const listNodeBytes = 16
const treeNodeBytes = 24

type listNode struct {
	value uint64
	next  *listNode
}

type treeNode struct {
	left, right *treeNode
	value       uint64
}

// The roots, package-level as goro's are in one Gc object.
var lists []*listNode
var trees []*treeNode

func list(length int, seed uint64) *listNode {
	head := &listNode{value: seed}
	for i := 1; i < length; i++ {
		head = &listNode{value: seed + uint64(i), next: head}
	}
	return head
}

func tree(depth int, value uint64) *treeNode {
	if depth == 0 {
		return &treeNode{value: value}
	}
	left := tree(depth-1, 2*value)
	right := tree(depth-1, 2*value+1)
	return &treeNode{left: left, right: right, value: value}
}

// shape is how many lists and trees make mb megabytes of payload.
func shape(mb int) (int, int) {
	half := float64(mb) * 1e6 / 2
	treeNodes := (1 << (treeDepth + 1)) - 1
	nLists := int(math.Max(1, math.Round(half/float64(listLen*listNodeBytes))))
	nTrees := int(math.Max(1, math.Round(half/float64(treeNodes*treeNodeBytes))))
	return nLists, nTrees
}

func main() {
	mb, procs := 100, runtime.NumCPU()
	if len(os.Args) > 1 {
		mb, _ = strconv.Atoi(os.Args[1])
	}
	if len(os.Args) > 2 {
		procs, _ = strconv.Atoi(os.Args[2])
	}
	runtime.GOMAXPROCS(procs)
	nLists, nTrees := shape(mb)
	objects := nLists*listLen + nTrees*((1<<(treeDepth+1))-1)
	built := time.Now()
	lists = make([]*listNode, nLists)
	for i := range lists {
		lists[i] = list(listLen, uint64(i*listLen))
	}
	trees = make([]*treeNode, nTrees)
	for i := range trees {
		trees[i] = tree(treeDepth, uint64(i))
	}
	buildMs := float64(time.Since(built).Nanoseconds()) / 1e6
	runtime.GC()
	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	start := time.Now()
	runtime.GC()
	elapsed := time.Since(start)
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(lists)
	runtime.KeepAlive(trees)
	stw := ""
	for c := before.NumGC + 1; c <= after.NumGC; c++ {
		if stw != "" {
			stw += ","
		}
		stw += fmt.Sprintf("%.0f", float64(after.PauseNs[(c+255)%256])/1e3)
	}
	ms := float64(elapsed.Nanoseconds()) / 1e6
	fmt.Printf("RESULT full_gc go variant=%d gomaxprocs=%d mb=%d lists=%d trees=%d objects=%d "+
		"live_objects=%d heap_mib=%.1f build_ms=%.0f cycles=%d stw_us=%s gc_ms=%.1f "+
		"total_ms=%.1f vmhwm_kib=%d\n",
		procs, procs, mb, nLists, nTrees, objects, after.HeapObjects,
		float64(after.HeapAlloc)/float64(1<<20), buildMs, after.NumGC-before.NumGC, stw, ms,
		ms, peakKiB())
}
