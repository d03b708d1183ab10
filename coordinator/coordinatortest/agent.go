package coordinatortest

import (
	"fmt"
	"slices"
	"sync"
	"time"

	"github.com/cachemachine/cachemachine/agent"
	"github.com/cachemachine/cachemachine/coordinator"
)

var _ coordinator.LocalAgent = (*Agent)(nil)

// Agent is a fake coordinator.LocalAgent: a node state and a desired list that the test sets,
// with the real agent's version rules (every change raises State().Version and signals
// Changes; SetDesired ignores a list that is not newer) and a log of SetDesired calls. All
// methods are safe for concurrent use and never block.
type Agent struct {
	changes chan struct{}

	mu      sync.Mutex // guards the fields below
	state   agent.State
	desired agent.Desired
	calls   []string // SetDesired calls: "set v" or "ignore v"
}

// NewAgent returns a ready agent of node with nothing cached and no desired list. Its first
// state version is the current time in nanoseconds, as a restarted agent's would be.
func NewAgent(node string) *Agent {
	return &Agent{
		changes: make(chan struct{}, 1),
		state: agent.State{
			Node:    node,
			Version: uint64(time.Now().UnixNano()),
			Ready:   true,
			Cached:  map[string]string{},
		},
	}
}

// State returns a copy of the node's state.
func (a *Agent) State() agent.State {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.state.Clone()
}

// Changes receives a value (coalesced) whenever the state version grew.
func (a *Agent) Changes() <-chan struct{} { return a.changes }

// Desired returns the desired list in force.
func (a *Agent) Desired() agent.Desired {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.desired
}

// SetDesired installs d when it is newer than the list in force, records it in the state as
// the agent does, and reports whether it did; every call is logged (Calls).
func (a *Agent) SetDesired(d agent.Desired) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	if d.Version <= a.desired.Version {
		a.calls = append(a.calls, fmt.Sprintf("ignore %d", d.Version))
		return false
	}
	a.calls = append(a.calls, fmt.Sprintf("set %d", d.Version))
	a.desired = d
	a.state.DesiredVersion = d.Version
	a.bumpLocked()
	return true
}

// Update changes the state with fn the way the agent does, raising its version by one and
// signalling Changes, and returns the new version.
func (a *Agent) Update(fn func(*agent.State)) uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	fn(&a.state)
	a.bumpLocked()
	return a.state.Version
}

// Calls returns the log of SetDesired calls, oldest first: "set <version>" or
// "ignore <version>".
func (a *Agent) Calls() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	return slices.Clone(a.calls)
}

func (a *Agent) bumpLocked() {
	a.state.Version++
	select {
	case a.changes <- struct{}{}:
	default:
	}
}
