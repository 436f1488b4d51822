//go:build race

package lbhealth

const raceEnabled = true
