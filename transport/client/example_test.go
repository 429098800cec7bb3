package client_test

import (
	"context"
	"errors"
	"log"
	"time"

	"switchboard/transport/client"
)

// fetchToken stands for the application's way to get a token (POST /refresh, an OIDC library).
func fetchToken(context.Context) (string, error) { return "", errors.New("no issuer in the example") }

// The client connects, calls a handler, subscribes with recovery and publishes. (Compiled, not
// run: it needs a server.)
func Example() {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	c, err := client.Dial(ctx, client.Config{URL: "ws://127.0.0.1:8000/web", GetToken: fetchToken})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()

	var author struct {
		ID   int64  `json:"id"`
		Name string `json:"name"`
	}
	err = c.Call(ctx, 3, map[string]string{"name": "Ursula K. Le Guin"}, &author)
	var refusal *client.Error
	switch {
	case client.IsInvalidData(err) && errors.As(err, &refusal):
		log.Printf("refused: %s %v", refusal.Msg, refusal.Errors)
	case err != nil:
		log.Fatal(err)
	}

	sub, err := c.Subscribe(ctx, "dashboards.sales",
		func(m client.Message) { log.Printf("seq %d: %s", m.Seq, m.Data) },
		client.OnMissed(func(m client.Missed) { log.Printf("reload: missed after %d", m.From.Seq) }))
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Unsubscribe(ctx)

	if _, err := c.Publish(ctx, "dashboards.sales", 7, map[string]int{"total": 42}); err != nil {
		log.Print(err)
	}
}
