// Package browser holds oneport's browser end-to-end test: headless Debian
// Chromium, driven by playwright-core (driver.js), loads the embedded demo
// page from an in-process oneport server, publishes its fake camera and
// microphone through WHIP and watches through WHEP, and the test asserts that
// video frames are decoded and audio packets received.
//
// Chromium gathers no WebRTC candidates on a loopback-only host, so the test
// runs it in a network namespace of its own joined to the root namespace by a
// veth pair on a private /30; the server listens on the root side. The
// namespace has no other route, so nothing the browser sends can leave it but
// to the server. See README.md for what must be installed.
//
// The package has no code of its own: the tests are in browser_linux_test.go,
// the namespace plumbing in netns_linux_test.go, the driver in driver.js.
package browser
