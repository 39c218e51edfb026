//go:build unix

package detector

import (
	"syscall"
	"time"
)

// processCPU returns the CPU time (user + system) the process has used: a
// benchmark figure that, unlike wall time, does not grow when other
// processes crowd the machine.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
