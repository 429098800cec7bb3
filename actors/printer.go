package actors

import (
	"golang.org/x/text/language"
	"golang.org/x/text/message"
)

// printer renders schema errors in English; it is read-only and safe to share.
var printer = message.NewPrinter(language.English)
