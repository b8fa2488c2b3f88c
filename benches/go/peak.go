// Shared by every Go workload (go run WORKLOAD.go peak.go): /proc/self/status readings.
package main

import (
	"os"
	"strconv"
	"strings"
)

// statusKiB reads a field such as "VmRSS:" from /proc/self/status, in KiB (0 if absent).
func statusKiB(field string) uint64 {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, field) {
			fields := strings.Fields(line[len(field):])
			if len(fields) > 0 {
				v, _ := strconv.ParseUint(fields[0], 10, 64)
				return v
			}
		}
	}
	return 0
}

// peakKiB is the process's peak RSS (VmHWM), in KiB.
func peakKiB() uint64 {
	return statusKiB("VmHWM:")
}
