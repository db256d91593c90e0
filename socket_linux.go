package upgrade

import (
	"net"
	"syscall"
	"unsafe"
)

// The copy loops' socket reads (engine.go). They need a non-blocking
// peek, which this file does for Linux; elsewhere (socket_other.go) the
// loops read through the connection with a buffer held while they wait.

// rawSocket returns the socket of a plain TCP or Unix connection. Other
// connections (TLS, wrappers that transform bytes) must be read through
// their Read, so they get nil.
func rawSocket(r any) syscall.RawConn {
	var sc syscall.Conn
	switch c := r.(type) {
	case *net.TCPConn:
		sc = c
	case *net.UnixConn:
		sc = c
	default:
		return nil
	}
	raw, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	return raw
}

// readSocket reads from a non-blocking socket as net's own Read does, so
// the caller can tell "would block" (EAGAIN) apart.
func readSocket(fd uintptr, p []byte) (int, error) {
	for {
		n, err := syscall.Read(int(fd), p)
		if err != syscall.EINTR {
			return n, err
		}
	}
}

// readable is a RawConn.Read callback that returns once a read would not
// block: bytes, EOF or an error wait. It reads nothing.
func readable(fd uintptr) bool {
	var b [1]byte
	for {
		_, _, errno := syscall.Syscall6(syscall.SYS_RECVFROM, fd, uintptr(unsafe.Pointer(&b[0])), 1,
			syscall.MSG_PEEK|syscall.MSG_DONTWAIT, 0, 0)
		if errno != syscall.EINTR {
			return errno != syscall.EAGAIN
		}
	}
}
