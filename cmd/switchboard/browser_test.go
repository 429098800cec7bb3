package main

// The dashboard page in a real browser: headless Chromium (Debian's), driven with chromedp,
// against a whole node. It logs in on two tabs, creates an author on one and sees it on the
// other, then restarts the server on the same port and data directory and sees the page come
// back by itself. It saves a screenshot of the page.

import (
	"context"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/log"
	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	"switchboard/config"
	"switchboard/store/redistest"
)

// chromiumPath finds Chromium (SWITCHBOARD_CHROMIUM, or chromium on the PATH), or skips the test
// (fails under CI=true).
func chromiumPath(t *testing.T) string {
	t.Helper()
	if p := os.Getenv("SWITCHBOARD_CHROMIUM"); p != "" {
		return p
	}
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p
		}
	}
	redistest.SkipOrFail(t, "Chromium is not installed (apt-get install chromium, or set SWITCHBOARD_CHROMIUM): the dashboard's browser test needs it")
	return ""
}

// pageLog collects what a tab reports as going wrong: uncaught exceptions, console errors and
// the browser's own errors (a CSP violation is one).
type pageLog struct {
	mu   sync.Mutex
	errs []string
}

func (p *pageLog) listen(tab string) func(ev any) {
	return func(ev any) {
		var msg string
		switch ev := ev.(type) {
		case *runtime.EventExceptionThrown:
			msg = "exception: " + ev.ExceptionDetails.Text
			if ev.ExceptionDetails.Exception != nil {
				msg += " " + ev.ExceptionDetails.Exception.Description
			}
		case *runtime.EventConsoleAPICalled:
			if ev.Type != "error" {
				return
			}
			var parts []string
			for _, a := range ev.Args {
				parts = append(parts, string(a.Value)+a.Description)
			}
			msg = "console.error: " + strings.Join(parts, " ")
		case *log.EventEntryAdded:
			if ev.Entry.Level != log.EntryLevelError {
				return
			}
			msg = "browser: " + ev.Entry.Text + " " + ev.Entry.URL
		default:
			return
		}
		p.mu.Lock()
		p.errs = append(p.errs, tab+": "+msg)
		p.mu.Unlock()
	}
}

func (p *pageLog) take() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	out := p.errs
	p.errs = nil
	return out
}

// cdpDo runs chromedp actions on tab, bounded by d (a bound against hangs only).
func cdpDo(t *testing.T, tab context.Context, d time.Duration, what string, steps ...chromedp.Action[chromedp.Void]) {
	t.Helper()
	ctx, cancel := context.WithTimeout(tab, d)
	defer cancel()
	if err := chromedp.Do(ctx, steps...); err != nil {
		t.Fatalf("%s: %v", what, err)
	}
}

// eval evaluates a JavaScript expression on tab.
func eval[T any](t *testing.T, tab context.Context, expr string) T {
	t.Helper()
	ctx, cancel := context.WithTimeout(tab, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitJS polls a JavaScript predicate on tab until it holds, failing after d.
func waitJS(t *testing.T, tab context.Context, d time.Duration, what, expr string) {
	t.Helper()
	cdpDo(t, tab, d+5*time.Second, "waiting for "+what,
		chromedp.Func(func(ctx context.Context, tg *chromedp.Target) error {
			_, err := chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(d), chromedp.WithPollingInterval(20*time.Millisecond))(ctx, tg)
			return err
		}))
}

func logIn(t *testing.T, tab context.Context, base, user string) {
	t.Helper()
	cdpDo(t, tab, 30*time.Second, "log in as "+user,
		chromedp.Navigate(base+"/"),
		chromedp.WaitVisible(chromedp.CSS("#login-form")),
		chromedp.SendKeys(chromedp.CSS(`#login-form input[name=username]`), user),
		chromedp.SendKeys(chromedp.CSS(`#login-form input[name=password]`), seedPassword),
		chromedp.Click(chromedp.CSS(`#login-form button[type=submit]`)),
		chromedp.WaitVisible(chromedp.CSS("#app")),
	)
	waitJS(t, tab, 15*time.Second, user+"'s page to go live and load the authors",
		`document.querySelector('#status').dataset.state === 'connected' && document.querySelector('#authors-count').textContent !== ''`)
}

func TestBrowserDashboard(t *testing.T) {
	chrome := chromiumPath(t)
	began := time.Now()
	dir := t.TempDir()
	seedDataDir(t, dir)
	s := startServer(t, func(c *config.Config) { c.DataDir, c.Addr = dir, restartableAddr(t) })
	addr := strings.TrimPrefix(s.base, "http://")

	alloc, cancelAlloc := chromedp.NewExecAllocator(context.Background(),
		chromedp.ExecPath(chrome), chromedp.Headless, chromedp.NoSandbox, chromedp.DisableGPU, chromedp.NoFirstRun,
		chromedp.Flag("disable-background-networking", true), chromedp.Flag("disable-component-update", true),
		chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 1000))
	defer cancelAlloc()
	var problems pageLog
	// The first Run on a context starts the browser (or opens the tab) for the context's life:
	// without a timeout, which would end the browser with it. Later calls are bounded. A tab made
	// from a context that has run shares its browser.
	admin, cancelAdmin := chromedp.NewContext(alloc, chromedp.WithListener(problems.listen("admin")))
	defer cancelAdmin()
	if err := chromedp.Do(admin); err != nil {
		t.Fatalf("start Chromium: %v", err)
	}
	reader, cancelReader := chromedp.NewContext(admin, chromedp.WithListener(problems.listen("reader")))
	defer cancelReader()
	if err := chromedp.Do(reader); err != nil {
		t.Fatalf("open a second tab: %v", err)
	}

	// Two tabs: admin (every role) and reader (get-authors only).
	logIn(t, admin, s.base, "admin")
	logIn(t, reader, s.base, "reader")
	if got := eval[string](t, reader, `document.querySelector('#author-explain').hidden ? '' : document.querySelector('#author-explain').textContent`); !strings.Contains(got, "create-author") {
		t.Fatalf("the reader is not told why they cannot create authors: %q", got)
	}
	if eval[bool](t, reader, `!document.querySelector('#author-form').hidden`) {
		t.Fatal("the reader is offered the create form")
	}

	// Create on the admin tab; the reader's tab shows it. The times are taken in the pages (one
	// clock: both tabs run in one browser on this machine), from the click to the row.
	name := fmt.Sprintf("Octavia E. Butler %d", time.Now().UnixNano()%100000)
	eval[bool](t, reader, `(() => {
		window.__seenAt = 0;
		const body = document.querySelector('#authors-body');
		new MutationObserver(() => {
			if (!window.__seenAt && [...body.querySelectorAll('td')].some((td) => td.textContent === `+jsString(name)+`)) window.__seenAt = Date.now();
		}).observe(body, { childList: true, subtree: true, characterData: true });
		return true; })()`)
	cdpDo(t, admin, 10*time.Second, "type the author's name", chromedp.SendKeys(chromedp.CSS(`#author-form input[name=name]`), name))
	eval[bool](t, admin, `(() => { window.__sentAt = Date.now(); document.querySelector('#author-form button').click(); return true; })()`)
	waitJS(t, reader, 10*time.Second, "the author on the reader's tab", `window.__seenAt > 0`)
	sentAt := eval[float64](t, admin, `window.__sentAt`)
	seenAt := eval[float64](t, reader, `window.__seenAt`)
	lag := time.Duration(seenAt-sentAt) * time.Millisecond
	t.Logf("the author appeared on the second tab %s after the click on the first", lag)
	// The contract says within 1 s; the bound allows 1 s more for a loaded CI machine running
	// the server under the race detector. On an idle machine it takes a few tens of ms.
	if lag > 2*time.Second {
		t.Fatalf("the author took %s to appear on the second tab (contract: within 1 s)", lag)
	}
	if errs := problems.take(); len(errs) > 0 {
		t.Fatalf("the page reported errors:\n%s", strings.Join(errs, "\n"))
	}

	// The console: the admin's page answers, the reader's shows the refusal as the server gave it.
	eval[bool](t, admin, `(() => { const f = document.querySelector('#console-form'); f.preset.value = '2'; f.preset.dispatchEvent(new Event('change')); f.querySelector('button').click(); return true; })()`)
	waitJS(t, admin, 10*time.Second, "the console's answer", `document.querySelector('#console-out').textContent.includes('"status_code": 0')`)
	eval[bool](t, reader, `(() => { const f = document.querySelector('#console-form'); f.preset.value = '20'; f.preset.dispatchEvent(new Event('change')); f.querySelector('button').click(); return true; })()`)
	waitJS(t, reader, 10*time.Second, "the console's refusal", `document.querySelector('#console-out').textContent.includes('"status_code": 3')`)

	// The live figures: a few seconds of sys.stats, then the screenshot.
	waitJS(t, admin, 20*time.Second, "five stats samples on the charts", `switchboardPage.samples() >= 5`)
	shot, err := chromedp.Run(admin, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatalf("screenshot: %v", err)
	}
	saveScreenshot(t, shot)

	// Restart the server on the same port and data directory; the pages must come back by
	// themselves (no reload: the marker set now survives), and say that they reloaded the table.
	eval[bool](t, reader, `(window.__marker = 'same page', true)`)
	if err := s.stop(); err != nil {
		t.Fatalf("stop: %v", err)
	}
	waitJS(t, reader, 10*time.Second, "the reader's page to notice", `document.querySelector('#status').dataset.state !== 'connected'`)
	s2 := startServer(t, func(c *config.Config) { c.DataDir = dir; c.Addr = addr })
	waitJS(t, reader, 30*time.Second, "the reader's page to come back and reload the authors",
		`document.querySelector('#status').dataset.state === 'connected' && switchboardPage.reloads >= 1 && !document.querySelector('#notice').hidden`)
	if m := eval[string](t, reader, `window.__marker ?? ''`); m != "same page" {
		t.Fatal("the page was reloaded")
	}
	if n := eval[string](t, reader, `document.querySelector('#notice').textContent`); !strings.Contains(n, "reloaded") {
		t.Fatalf("notice %q does not say the table was reloaded", n)
	}
	waitJS(t, reader, 10*time.Second, "the author still listed", `[...document.querySelectorAll('#authors-body td')].some((td) => td.textContent === `+jsString(name)+`)`)

	// Live again: an author created through the HTTP façade appears.
	second := name + " II"
	resp, body := s2.do(t, http.MethodPost, "/authors", s2.token(t, "browser-test", "create-author"), `{"name":`+jsString(second)+`}`)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("create after the restart: %d %s", resp.StatusCode, body)
	}
	waitJS(t, reader, 10*time.Second, "the author created after the restart",
		`[...document.querySelectorAll('#authors-body td')].some((td) => td.textContent === `+jsString(second)+`)`)
	for _, e := range problems.take() {
		// While the server was down the browser logged the refused WebSocket attempts; anything
		// else is a fault of the page.
		if !strings.Contains(e, "WebSocket connection to") && !strings.Contains(e, "ERR_CONNECTION_REFUSED") {
			t.Errorf("the page reported an error: %s", e)
		}
	}
	t.Logf("browser test took %s", time.Since(began).Round(time.Millisecond))
}

// jsString quotes s as a JavaScript string literal.
func jsString(s string) string {
	return fmt.Sprintf("%q", s) // the names are ASCII: Go's quoting is JavaScript's
}

// saveScreenshot writes the screenshot where SWITCHBOARD_TEST_ARTIFACTS says (or in a new
// temporary directory that outlives the test) and logs the path. SWITCHBOARD_UPDATE_SCREENSHOT=1
// also writes docs/dashboard.png, the README's picture.
func saveScreenshot(t *testing.T, png []byte) {
	t.Helper()
	dir := os.Getenv("SWITCHBOARD_TEST_ARTIFACTS")
	if dir == "" {
		var err error
		if dir, err = os.MkdirTemp("", "switchboard-browser-"); err != nil {
			t.Fatal(err)
		}
	} else if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "dashboard.png")
	if err := os.WriteFile(path, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot of the dashboard: %s", path)
	if os.Getenv("SWITCHBOARD_UPDATE_SCREENSHOT") == "1" {
		if err := os.WriteFile(filepath.Join("..", "..", "docs", "dashboard.png"), png, 0o644); err != nil {
			t.Fatal(err)
		}
	}
}
