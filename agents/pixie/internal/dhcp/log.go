package dhcp

import "strconv"

// maxLogBytes bounds what of a client's or relay's bytes reaches a log
// line: enough to recognise a circuit id or an error, never a packet.
const maxLogBytes = 128

// bounded renders untrusted bytes for a log line: at most n of them,
// quoted (so control characters cannot forge lines), marked when cut.
func bounded(b []byte, n int) string {
	if len(b) <= n {
		return strconv.Quote(string(b))
	}
	return strconv.Quote(string(b[:n])) + "…(" + strconv.Itoa(len(b)) + " bytes)"
}
