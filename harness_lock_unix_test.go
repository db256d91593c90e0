//go:build darwin || dragonfly || freebsd || illumos || linux || netbsd || openbsd

package upgrade

import (
	"errors"
	"os"
	"syscall"
)

// harnessLockDir is a fixed directory rather than $TMPDIR, so that test
// binaries run with different environments still meet on one lock.
const harnessLockDir = "/tmp"

// tryLock takes an exclusive flock(2) on f without waiting; busy reports
// that another process holds it. The kernel drops the lock when the
// process exits, however it exits.
func tryLock(f *os.File) (busy bool, err error) {
	err = syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
	return errors.Is(err, syscall.EWOULDBLOCK), err
}
