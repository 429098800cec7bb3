package hub

// Messages of the hub actor. All are sent as pointers and never changed after sending.
type (
	register struct{ conn Conn }
	// unregister removes a connection that closed.
	unregister struct{ id uint64 }
	// deliver is a broadcast that came off the bus (or straight from Broadcast without one).
	deliver struct {
		msg *Message
		// uncounted: the node's own monitoring (sys.stats), left out of ws_broadcasts_total and
		// ws_broadcast_duration_seconds, so that watching the figures does not change them.
		uncounted bool
	}
	subscribe   struct{ req *SubscribeRequest }
	unsubscribe struct {
		id    uint64
		topic string
	}
	// historyLoaded is the answer to loadHistory.
	historyLoaded struct {
		topic string
		refs  []loadRef // the subscriptions the read serves
		w     Window    // the history after the smallest of their since
		err   error
	}
	// resync: the bus resubscribed; what was published while it was down never came.
	resync struct{}
	// filled is the answer to fill: the history of topic after since.
	filled struct {
		topic string
		id    uint64
		since uint64
		w     Window
		err   error
	}
	// closeAll closes every connection (shutdown) and answers when done.
	closeAll struct {
		code   uint16
		reason string
	}
	closedAll struct{ count int }
	// pingAll is the keepalive tick: it pings the connections whose ID is slice modulo of.
	pingAll struct{ slice, of uint64 }
)
