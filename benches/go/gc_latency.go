// gc_latency MIB OPS: a live heap of MIB MiB of 256-byte objects held in a []*T (MIB*4096
// slots; 256 is 1 Mi slots), then OPS random slot replacements (each a new object, its 32 words
// written), a timestamp every 256 operations. The same loop and random sequence as goro-bench's
// gc_latency.rs.
//
// Keys as goro-bench's: gap_max_us and gap_p99_us (gaps between consecutive timestamps),
// gc_cycles (NumGC over the loop), stw_max_us and stw_p99_us (the individual GC pauses of the
// loop, from the runtime/metrics histogram /gc/pauses:seconds, each the upper bound of its
// bucket; stw_source=metrics; where that metric is missing, the per-cycle pause totals of
// MemStats.PauseNs, stw_source=pausens), stw_cycle_max_us (the longest per-cycle pause total,
// from PauseNs), gc_cpu_share (GC CPU over the process's CPU time from getrusage, over the loop:
// the GC CPU is /cpu/classes/gc/total:cpu-seconds where the runtime has it (Go 1.20+,
// gc_cpu_source=metrics), else MemStats.GCCPUFraction times GOMAXPROCS times the time since
// start (gc_cpu_source=gccpufraction)).
// Run: go run gc_latency.go peak.go 256 10000000
package main

import (
	"fmt"
	"math"
	"os"
	"runtime"
	"runtime/metrics"
	"sort"
	"strconv"
	"syscall"
	"time"
)

const objectBytes = 256
const stampEvery = 256

// T is one 256-byte object (no pointers, as goro's and the peers' objects).
type T [objectBytes / 8]uint64

var processStart = time.Now()

// rng is xorshift64, seeded as gc_latency.rs seeds it.
type rng struct{ x uint64 }

func (r *rng) slot(slots uint64) uint64 {
	x := r.x
	x ^= x << 13
	x ^= x >> 7
	x ^= x << 17
	r.x = x
	return ((x >> 32) * slots) >> 32
}

func newT(i uint64) *T {
	t := new(T)
	for j := range t {
		t[j] = i
	}
	return t
}

// processCPU is this process's user + system CPU time.
func processCPU() time.Duration {
	var usage syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &usage); err != nil {
		return 0
	}
	return time.Duration(usage.Utime.Nano() + usage.Stime.Nano())
}

// gcCPU is the GC's CPU time so far, and where it came from.
func gcCPU() (float64, string) {
	sample := []metrics.Sample{{Name: "/cpu/classes/gc/total:cpu-seconds"}}
	metrics.Read(sample)
	if sample[0].Value.Kind() == metrics.KindFloat64 {
		return sample[0].Value.Float64(), "metrics"
	}
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	elapsed := time.Since(processStart).Seconds()
	return ms.GCCPUFraction * float64(runtime.GOMAXPROCS(0)) * elapsed, "gccpufraction"
}

// pauseHistogram is the GC pause histogram, or nil where the runtime has none.
func pauseHistogram() *metrics.Float64Histogram {
	sample := []metrics.Sample{{Name: "/gc/pauses:seconds"}}
	metrics.Read(sample)
	if sample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return nil
	}
	return sample[0].Value.Float64Histogram()
}

// histogramQuantiles gives the max and the 99th percentile of the pauses counted in after but
// not in before, each the upper bound of its bucket (the lower one for an unbounded bucket),
// in microseconds, and how many pauses there were.
func histogramQuantiles(before, after *metrics.Float64Histogram) (float64, float64, uint64) {
	counts := make([]uint64, len(after.Counts))
	var total uint64
	for i := range after.Counts {
		counts[i] = after.Counts[i] - before.Counts[i]
		total += counts[i]
	}
	if total == 0 {
		return 0, 0, 0
	}
	bound := func(i int) float64 {
		hi := after.Buckets[i+1]
		if math.IsInf(hi, 1) {
			hi = after.Buckets[i]
		}
		return hi * 1e6
	}
	maxUs, p99Us := 0.0, 0.0
	rank := uint64(math.Ceil(float64(total) * 0.99))
	var seen uint64
	p99Found := false
	for i, c := range counts {
		if c == 0 {
			continue
		}
		seen += c
		if !p99Found && seen >= rank {
			p99Us = bound(i)
			p99Found = true
		}
		maxUs = bound(i)
	}
	return maxUs, p99Us, total
}

// quantile is the q-quantile of sorted values (nearest rank).
func quantile(sorted []int64, q float64) int64 {
	if len(sorted) == 0 {
		return 0
	}
	rank := int(math.Ceil(float64(len(sorted)) * q))
	if rank < 1 {
		rank = 1
	}
	if rank > len(sorted) {
		rank = len(sorted)
	}
	return sorted[rank-1]
}

func main() {
	mib, ops := 64, uint64(10000000)
	if len(os.Args) > 1 {
		mib, _ = strconv.Atoi(os.Args[1])
	}
	if len(os.Args) > 2 {
		ops, _ = strconv.ParseUint(os.Args[2], 10, 64)
	}
	slots := uint64(mib) << 20 / objectBytes
	array := make([]*T, slots)
	for i := range array {
		array[i] = newT(uint64(i))
	}
	stamps := make([]int64, ops/stampEvery)
	r := rng{0x9E3779B97F4A7C15}

	var before runtime.MemStats
	runtime.ReadMemStats(&before)
	histBefore := pauseHistogram()
	gcBefore, gcSource := gcCPU()
	cpuBefore := processCPU()

	start := time.Now()
	n := 0
	for i := uint64(0); i < ops; i++ {
		array[r.slot(slots)] = newT(i)
		if i%stampEvery == stampEvery-1 && n < len(stamps) {
			stamps[n] = int64(time.Since(start))
			n++
		}
	}
	elapsed := time.Since(start)

	cpu := processCPU() - cpuBefore
	gcAfter, _ := gcCPU()
	histAfter := pauseHistogram()
	var after runtime.MemStats
	runtime.ReadMemStats(&after)
	runtime.KeepAlive(array)

	gaps := make([]int64, n)
	last := int64(0)
	for i := 0; i < n; i++ {
		gaps[i] = stamps[i] - last
		last = stamps[i]
	}
	sort.Slice(gaps, func(i, j int) bool { return gaps[i] < gaps[j] })

	cycles := after.NumGC - before.NumGC
	// The per-cycle pause totals of the loop's cycles (PauseNs keeps the last 256).
	var cyclePauses []int64
	for c := before.NumGC + 1; c <= after.NumGC && after.NumGC-c < 256; c++ {
		cyclePauses = append(cyclePauses, int64(after.PauseNs[(c+255)%256]))
	}
	sort.Slice(cyclePauses, func(i, j int) bool { return cyclePauses[i] < cyclePauses[j] })
	stwMax, stwP99, stwSource := 0.0, 0.0, "pausens"
	stwSamples := uint64(len(cyclePauses))
	if histBefore != nil && histAfter != nil {
		stwMax, stwP99, stwSamples = histogramQuantiles(histBefore, histAfter)
		stwSource = "metrics"
	} else {
		stwMax = float64(quantile(cyclePauses, 1.0)) / 1e3
		stwP99 = float64(quantile(cyclePauses, 0.99)) / 1e3
	}
	share := 0.0
	if cpu > 0 {
		share = (gcAfter - gcBefore) / cpu.Seconds()
	}
	fmt.Printf("RESULT gc_latency go live_mib=%d slots=%d ops=%d gap_max_us=%.1f gap_p99_us=%.1f "+
		"ns_per_op=%.1f gc_cycles=%d stw_max_us=%.1f stw_p99_us=%.1f stw_samples=%d stw_source=%s "+
		"stw_cycle_max_us=%.1f stw_total_ms=%.1f gc_cpu_share=%.3f gc_cpu_ms=%.0f gc_cpu_source=%s "+
		"cpu_ms=%.0f gomaxprocs=%d total_ms=%.1f vmhwm_kib=%d\n",
		mib, slots, ops,
		float64(quantile(gaps, 1.0))/1e3, float64(quantile(gaps, 0.99))/1e3,
		float64(elapsed.Nanoseconds())/float64(ops), cycles,
		stwMax, stwP99, stwSamples, stwSource,
		float64(quantile(cyclePauses, 1.0))/1e3,
		float64(after.PauseTotalNs-before.PauseTotalNs)/1e6,
		share, (gcAfter-gcBefore)*1e3, gcSource,
		cpu.Seconds()*1e3, runtime.GOMAXPROCS(0),
		float64(elapsed.Nanoseconds())/1e6, peakKiB())
}
