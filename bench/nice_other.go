//go:build !linux

package bench

// setOwnNice is not done outside Linux: senders run at normal priority.
func setOwnNice(int) error { return nil }
