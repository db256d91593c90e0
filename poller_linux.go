package upgrade

import (
	"errors"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// The shared poller of owned tunnels (tunnel.go): one epoll instance for
// the whole process waits on the sockets of every idle tunnel, so an idle
// tunnel costs no goroutine and no buffer. A socket is armed one-shot:
// when it becomes readable its flow runs once, on a goroutine of its own,
// until the socket would block, and arms it again. Go's own poller also
// watches these sockets (edge-triggered, for the writes that block and for
// Close); a socket may sit in both epoll sets, and the kernel drops it from
// this one when Go closes it.

const pollerSupported = true

type poller struct {
	mu      sync.Mutex
	epfd    int // -1 until first use
	wakeFd  int // an eventfd that ends a wait
	flows   map[uint64]*flow
	nextID  uint64
	running bool // a goroutine waits in epoll_wait
	err     error
}

// wakeToken is the event data of wakeFd; flows get 1, 2, ...
const wakeToken = 0

var sharedPoller = &poller{epfd: -1}

// add registers f and gives it its token. The waiting goroutine starts
// with the first flow and ends with the last, so a process without
// tunnels has none.
func (p *poller) add(f *flow) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.epfd < 0 && p.err == nil {
		p.err = p.open()
	}
	if p.err != nil {
		return p.err
	}
	if p.flows == nil {
		p.flows = make(map[uint64]*flow)
	}
	p.nextID++
	f.token = p.nextID
	p.flows[f.token] = f
	if !p.running {
		p.running = true
		go p.wait()
	}
	return nil
}

func (p *poller) open() error {
	epfd, err := syscall.EpollCreate1(syscall.EPOLL_CLOEXEC)
	if err != nil {
		return os.NewSyscallError("epoll_create1", err)
	}
	wake, _, errno := syscall.Syscall(syscall.SYS_EVENTFD2, 0, syscall.O_CLOEXEC|syscall.O_NONBLOCK, 0)
	if errno != 0 {
		syscall.Close(epfd)
		return os.NewSyscallError("eventfd2", errno)
	}
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN}
	setToken(&ev, wakeToken)
	if err := syscall.EpollCtl(epfd, syscall.EPOLL_CTL_ADD, int(wake), &ev); err != nil {
		syscall.Close(epfd)
		syscall.Close(int(wake))
		return os.NewSyscallError("epoll_ctl", err)
	}
	p.epfd, p.wakeFd = epfd, int(wake)
	return nil
}

// arm asks for f's next readiness, once. Level-triggered: a socket that
// is readable already fires at once.
func (p *poller) arm(f *flow) error {
	ev := syscall.EpollEvent{Events: syscall.EPOLLIN | syscall.EPOLLRDHUP | syscall.EPOLLONESHOT}
	setToken(&ev, f.token)
	var ctlErr error
	err := f.src.raw.Control(func(fd uintptr) {
		op := syscall.EPOLL_CTL_MOD
		if !f.armed.Load() {
			op = syscall.EPOLL_CTL_ADD
		}
		ctlErr = syscall.EpollCtl(p.epfd, op, int(fd), &ev)
		if ctlErr == nil {
			f.armed.Store(true)
		}
	})
	if err != nil {
		return err // the connection is closed
	}
	if ctlErr != nil {
		return os.NewSyscallError("epoll_ctl", ctlErr)
	}
	return nil
}

// remove forgets f. Its socket leaves the epoll set here if it is still
// open (the kernel drops a closed one); an event already on its way for f
// finds no flow and is ignored.
func (p *poller) remove(f *flow) {
	if f.armed.Load() {
		f.src.raw.Control(func(fd uintptr) {
			syscall.EpollCtl(p.epfd, syscall.EPOLL_CTL_DEL, int(fd), nil)
		})
	}
	p.mu.Lock()
	delete(p.flows, f.token)
	last := len(p.flows) == 0 && p.running
	p.mu.Unlock()
	if last {
		one := uint64(1)
		syscall.Write(p.wakeFd, (*[8]byte)(unsafe.Pointer(&one))[:])
	}
}

// wait hands each readiness to its flow until no flow is left.
func (p *poller) wait() {
	events := make([]syscall.EpollEvent, 128)
	for {
		n, err := syscall.EpollWait(p.epfd, events, -1)
		if err != nil {
			if errors.Is(err, syscall.EINTR) {
				continue
			}
			p.fail(os.NewSyscallError("epoll_wait", err))
			return
		}
		p.mu.Lock()
		for _, ev := range events[:n] {
			token := getToken(&ev)
			if token == wakeToken {
				var b [8]byte
				syscall.Read(p.wakeFd, b[:])
				continue
			}
			if f := p.flows[token]; f != nil {
				go f.ready()
			}
		}
		if len(p.flows) == 0 {
			p.running = false
			p.mu.Unlock()
			return
		}
		p.mu.Unlock()
	}
}

// fail ends every flow when the poller itself breaks, which would
// otherwise leave their tunnels hanging unread.
func (p *poller) fail(err error) {
	p.mu.Lock()
	flows := p.flows
	p.flows = nil
	p.running = false
	p.mu.Unlock()
	for _, f := range flows {
		go f.events.flowEnded(f, false, err)
	}
}

// The 64 bits of an event's data hold the token: Fd and Pad are its two
// halves (syscall names them for the common use, a file descriptor).
func setToken(ev *syscall.EpollEvent, token uint64) {
	ev.Fd = int32(uint32(token))
	ev.Pad = int32(uint32(token >> 32))
}

func getToken(ev *syscall.EpollEvent) uint64 {
	return uint64(uint32(ev.Fd)) | uint64(uint32(ev.Pad))<<32
}
