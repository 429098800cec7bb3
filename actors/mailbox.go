package actors

import (
	"runtime"
	"sync"

	"github.com/asynkron/protoactor-go/actor"
)

// connMailbox is the connection actors' mailbox. protoactor's unbounded lock-free mailbox keeps
// two queues that each hold a node even when empty, about 170 bytes of every idle connection;
// this one is a mutex and two arrival queues that hold no array while empty (112 bytes). It
// keeps the default mailbox's rules: system messages first, SuspendMailbox and ResumeMailbox
// stop and restart user messages, at most the dispatcher's Throughput messages before it yields
// (runtime.Gosched), a panic in a message is escalated to the supervisor, and the mailbox is
// scheduled on its dispatcher at most once at a time. Message batches are not unpacked (nothing
// sends them to a connection actor).
type connMailbox struct {
	mu         sync.Mutex
	sys, user  arrivals
	scheduled  bool // on the dispatcher, or running
	suspended  bool
	invoker    actor.MessageInvoker
	dispatcher actor.Dispatcher
}

func newConnMailbox() actor.Mailbox { return &connMailbox{} }

func (m *connMailbox) PostUserMessage(msg any) {
	m.mu.Lock()
	m.user.push(msg)
	m.scheduleLocked()
}

func (m *connMailbox) PostSystemMessage(msg any) {
	m.mu.Lock()
	m.sys.push(msg)
	m.scheduleLocked()
}

// scheduleLocked hands the mailbox to its dispatcher unless it is there already. Called with
// m.mu held; unlocks it.
func (m *connMailbox) scheduleLocked() {
	if m.scheduled {
		m.mu.Unlock()
		return
	}
	m.scheduled = true
	m.mu.Unlock()
	m.dispatcher.Schedule(m.process)
}

func (m *connMailbox) RegisterHandlers(invoker actor.MessageInvoker, dispatcher actor.Dispatcher) {
	m.invoker, m.dispatcher = invoker, dispatcher
}

func (m *connMailbox) Start() {}

func (m *connMailbox) UserMessageCount() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.user.len()
}

// process runs the messages until none can run (the queues are empty, or only user messages
// wait while suspended), then leaves the dispatcher.
func (m *connMailbox) process() {
	for {
		m.run()
		m.mu.Lock()
		if m.sys.len() == 0 && (m.suspended || m.user.len() == 0) {
			m.scheduled = false
			m.mu.Unlock()
			return
		}
		m.mu.Unlock()
	}
}

// run handles messages, system ones first; it returns when none can run, or after a panic,
// which the supervisor is told of.
func (m *connMailbox) run() {
	var msg any
	defer func() {
		if r := recover(); r != nil {
			m.invoker.EscalateFailure(r, msg)
		}
	}()
	i, t := 0, m.dispatcher.Throughput()
	for {
		if i > t {
			i = 0
			runtime.Gosched()
		}
		i++
		m.mu.Lock()
		if m.sys.len() > 0 {
			msg = m.sys.peek()
			m.sys.pop()
			switch msg.(type) {
			case *actor.SuspendMailbox:
				m.suspended = true
				m.mu.Unlock()
			case *actor.ResumeMailbox:
				m.suspended = false
				m.mu.Unlock()
			default:
				m.mu.Unlock()
				m.invoker.InvokeSystemMessage(msg)
			}
			continue
		}
		if m.suspended || m.user.len() == 0 {
			m.mu.Unlock()
			return
		}
		msg = m.user.peek()
		m.user.pop()
		m.mu.Unlock()
		m.invoker.InvokeUserMessage(msg)
	}
}
