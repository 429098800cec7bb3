// Package web holds what the server hands to browsers, embedded in the binary: the live
// dashboard page (static/: index.html, its ES modules and style sheet, and the uPlot charting
// library, vendored with its licence) and the JavaScript client (client/: an ES module with no
// runtime dependency and its own package.json, so it can be published to npm as it is; its
// tests run with Node's test runner from cmd/switchboard's TestJSClient).
//
// Nothing is built at run time: the files are served as they are in the repository, from
// memory, with a Content-Security-Policy of their own (CSP) and ETags.
//
// Concurrency contract: a Handler is read-only after New and safe for concurrent use; it starts
// no goroutine.
package web
