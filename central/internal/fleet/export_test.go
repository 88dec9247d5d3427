package fleet

// HoldHandshakeSlot takes one handshake slot as a handshake in progress
// would, so that a test can make admission deterministic instead of
// hoping that goroutines overlap; release gives it back.
func (h *Hub) HoldHandshakeSlot() (release func()) {
	h.handshakes <- struct{}{}
	return func() { <-h.handshakes }
}
