// Shared by every Go workload (go run WORKLOAD.go peak.go): the process's peak RSS.
package main

import (
	"os"
	"strconv"
	"strings"
)

// peakKiB is VmHWM from /proc/self/status, in KiB.
func peakKiB() uint64 {
	status, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(status), "\n") {
		if strings.HasPrefix(line, "VmHWM:") {
			fields := strings.Fields(line[len("VmHWM:"):])
			if len(fields) > 0 {
				v, _ := strconv.ParseUint(fields[0], 10, 64)
				return v
			}
		}
	}
	return 0
}
