//go:build !unix

package detector

import "time"

func processCPU() time.Duration { return 0 }
