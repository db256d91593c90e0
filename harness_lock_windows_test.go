package upgrade

import (
	"errors"
	"os"

	"golang.org/x/sys/windows"
)

var harnessLockDir = os.TempDir()

// tryLock takes an exclusive lock on the first byte of f without waiting;
// busy reports that another process holds it. Windows drops the lock when
// the process exits.
func tryLock(f *os.File) (busy bool, err error) {
	err = windows.LockFileEx(windows.Handle(f.Fd()), windows.LOCKFILE_EXCLUSIVE_LOCK|windows.LOCKFILE_FAIL_IMMEDIATELY,
		0, 1, 0, new(windows.Overlapped))
	return errors.Is(err, windows.ERROR_LOCK_VIOLATION), err
}
