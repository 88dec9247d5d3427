package facts

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"time"
	"unsafe"

	"golang.org/x/sys/unix"

	agentv1 "github.com/metalfleet/metalfleet/proto/metalfleet/agent/v1"
)

// IPMI commands (IPMI v2.0 spec): network function, command.
const (
	netfnApp       = 0x06
	cmdGetDeviceID = 0x01

	netfnTransport    = 0x0c
	cmdGetLANConfig   = 0x02
	lanParamIP        = 3
	lanParamMAC       = 5
	maxLANChannel     = 11
	ipmiCompletionOK  = 0x00
	ipmiRequestTimout = 5 * time.Second
)

// ipmiTransport sends one request to the local BMC and returns the
// response data, completion code first.
type ipmiTransport interface {
	request(ctx context.Context, netfn, cmd byte, data []byte) ([]byte, error)
}

// readBMC asks the BMC behind the IPMI device at path for its firmware
// and LAN address. No device means no BMC: (nil, nil).
func readBMC(ctx context.Context, path string) (*agentv1.BMCFact, error) {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, os.ErrNotExist) || errors.Is(err, unix.ENXIO) || errors.Is(err, unix.ENODEV) {
		return nil, nil
	}
	if err != nil {
		return nil, errPath(path, err)
	}
	defer f.Close()
	return bmcFrom(ctx, &ipmiDev{f: f})
}

// bmcFrom reads the firmware version (Get Device ID) and the address of
// the first LAN channel that answers Get LAN Configuration Parameters;
// which channel is the LAN one differs between vendors (mostly 1, some 2,
// 8).
func bmcFrom(ctx context.Context, t ipmiTransport) (*agentv1.BMCFact, error) {
	id, err := t.request(ctx, netfnApp, cmdGetDeviceID, nil)
	if err != nil {
		return nil, fmt.Errorf("get device id: %w", err)
	}
	if len(id) < 5 || id[0] != ipmiCompletionOK {
		return nil, fmt.Errorf("get device id: bad response % x", id)
	}
	bmc := &agentv1.BMCFact{FirmwareVersion: fmt.Sprintf("%d.%02x", id[3]&0x7f, id[4])}
	for ch := byte(1); ch <= maxLANChannel; ch++ {
		ip, err := lanParam(ctx, t, ch, lanParamIP, 4)
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			continue
		}
		mac, err := lanParam(ctx, t, ch, lanParamMAC, 6)
		if err != nil {
			continue
		}
		if a := netip.AddrFrom4([4]byte(ip)); !a.IsUnspecified() {
			bmc.Address = a.String()
		}
		bmc.Mac = net.HardwareAddr(mac).String()
		return bmc, nil
	}
	return bmc, nil
}

func lanParam(ctx context.Context, t ipmiTransport, ch, param byte, n int) ([]byte, error) {
	resp, err := t.request(ctx, netfnTransport, cmdGetLANConfig, []byte{ch, param, 0, 0})
	if err != nil {
		return nil, err
	}
	// completion code, parameter revision, data
	if len(resp) < 2+n || resp[0] != ipmiCompletionOK {
		return nil, fmt.Errorf("channel %d parameter %d: bad response % x", ch, param, resp)
	}
	return resp[2 : 2+n], nil
}

// The Linux IPMI driver's ioctl interface (include/uapi/linux/ipmi.h), as
// laid out on 64-bit platforms.
type ipmiSystemInterfaceAddr struct {
	addrType int32
	channel  int16
	lun      uint8
	_        uint8
}

type ipmiMsg struct {
	netfn   uint8
	cmd     uint8
	dataLen uint16
	_       [4]byte
	data    unsafe.Pointer
}

type ipmiReq struct {
	addr    unsafe.Pointer
	addrLen uint32
	_       [4]byte
	msgid   int64
	msg     ipmiMsg
}

type ipmiRecv struct {
	recvType int32
	_        [4]byte
	addr     unsafe.Pointer
	addrLen  uint32
	_        [4]byte
	msgid    int64
	msg      ipmiMsg
}

const (
	ipmiSystemInterfaceAddrType = 0x0c
	ipmiBMCChannel              = 0x0f
	ipmiResponseRecvType        = 1
	ipmiMaxAddrSize             = 32
)

// ioctl numbers: dir<<30 | size<<16 | type<<8 | nr with type 'i'.
const (
	ipmictlSendCommand    = 2<<30 | unsafe.Sizeof(ipmiReq{})<<16 | 'i'<<8 | 13  // _IOR
	ipmictlReceiveMsgTrun = 3<<30 | unsafe.Sizeof(ipmiRecv{})<<16 | 'i'<<8 | 11 // _IOWR
)

type ipmiDev struct {
	f     *os.File
	msgid int64
}

func (d *ipmiDev) request(ctx context.Context, netfn, cmd byte, data []byte) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, ipmiRequestTimout)
	defer cancel()
	d.msgid++
	addr := &ipmiSystemInterfaceAddr{addrType: ipmiSystemInterfaceAddrType, channel: ipmiBMCChannel}
	buf := make([]byte, len(data)+1)
	copy(buf, data)
	req := &ipmiReq{
		addr:    unsafe.Pointer(addr),
		addrLen: uint32(unsafe.Sizeof(*addr)),
		msgid:   d.msgid,
		msg:     ipmiMsg{netfn: netfn, cmd: cmd, dataLen: uint16(len(data)), data: unsafe.Pointer(&buf[0])},
	}
	rc, err := d.f.SyscallConn()
	if err != nil {
		return nil, err
	}
	var ioErr error
	if err := rc.Control(func(fd uintptr) {
		_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, ipmictlSendCommand, uintptr(unsafe.Pointer(req)))
		if e != 0 {
			ioErr = e
		}
	}); err != nil {
		return nil, err
	}
	if ioErr != nil {
		return nil, fmt.Errorf("send: %w", ioErr)
	}
	for {
		if err := d.wait(ctx, rc); err != nil {
			return nil, err
		}
		raddr := make([]byte, ipmiMaxAddrSize)
		rdata := make([]byte, 256)
		recv := &ipmiRecv{
			addr:    unsafe.Pointer(&raddr[0]),
			addrLen: uint32(len(raddr)),
			msg:     ipmiMsg{dataLen: uint16(len(rdata)), data: unsafe.Pointer(&rdata[0])},
		}
		if err := rc.Control(func(fd uintptr) {
			_, _, e := unix.Syscall(unix.SYS_IOCTL, fd, ipmictlReceiveMsgTrun, uintptr(unsafe.Pointer(recv)))
			ioErr = nil
			if e != 0 && e != unix.EMSGSIZE { // EMSGSIZE: truncated, data still valid
				ioErr = e
			}
		}); err != nil {
			return nil, err
		}
		if errors.Is(ioErr, unix.EAGAIN) {
			continue
		}
		if ioErr != nil {
			return nil, fmt.Errorf("receive: %w", ioErr)
		}
		if recv.recvType != ipmiResponseRecvType || recv.msgid != d.msgid {
			continue // an event or the late answer to an earlier request
		}
		n := int(recv.msg.dataLen)
		if n > len(rdata) {
			n = len(rdata)
		}
		return rdata[:n], nil
	}
}

// wait polls in short slices so that ctx cancels a BMC that never answers.
func (d *ipmiDev) wait(ctx context.Context, rc interface {
	Control(func(fd uintptr)) error
}) error {
	for {
		if err := ctx.Err(); err != nil {
			return fmt.Errorf("waiting for the BMC: %w", err)
		}
		var n int
		var perr error
		if err := rc.Control(func(fd uintptr) {
			n, perr = unix.Poll([]unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}, 100)
		}); err != nil {
			return err
		}
		if perr != nil && !errors.Is(perr, unix.EINTR) {
			return fmt.Errorf("poll: %w", perr)
		}
		if n > 0 {
			return nil
		}
	}
}
