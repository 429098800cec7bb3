package hub

// Messages of the hub actor. All are sent as pointers and never changed after sending.
type (
	register struct{ conn Conn }
	// unregister removes a connection that closed.
	unregister struct{ id uint64 }
	broadcast  struct{ msg *Message }
	// closeAll closes every connection (shutdown) and answers when done.
	closeAll struct {
		code   uint16
		reason string
	}
	closedAll struct{ count int }
	// pingAll is the keepalive tick.
	pingAll struct{}
)
