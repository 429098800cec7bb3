package actors

// arrivals is a connection actor's queue: its requests (*Request) and the read side's ready
// answers (*Response), in the order they arrived. The read side's in-flight cap bounds it. An
// idle connection holds no array; one that keeps requests coming without ever draining reuses
// its array instead of growing it.
type arrivals struct {
	items []any
	head  int
}

func (q *arrivals) len() int { return len(q.items) - q.head }

func (q *arrivals) push(v any) { q.items = append(q.items, v) }

// peek returns the oldest item; the queue must not be empty.
func (q *arrivals) peek() any { return q.items[q.head] }

// pop drops the oldest item.
func (q *arrivals) pop() {
	q.items[q.head] = nil
	q.head++
	switch n := len(q.items) - q.head; {
	case n == 0:
		q.items, q.head = nil, 0
	case q.head >= 16 && q.head >= n:
		// The front half is spent: move the rest down rather than let append grow the array.
		copy(q.items, q.items[q.head:])
		clear(q.items[n:])
		q.items, q.head = q.items[:n], 0
	}
}
