//go:build !(darwin || dragonfly || freebsd || illumos || linux || netbsd || openbsd || windows)

package upgrade

import "os"

var harnessLockDir = os.TempDir()

// tryLock cannot lock here (no flock(2), no LockFileEx): test binaries that
// use caddytest must not run at the same time on this system.
func tryLock(*os.File) (busy bool, err error) { return false, nil }
