// Command fiber shows fasttimeout in front of a Fiber v2 app: the app's
// Handler() is wrapped by fasttimeout.New and served by fasthttp, and a
// Fiber middleware hands the request's deadline to c.UserContext().
package main

import (
	"log"
	"time"

	"github.com/gofiber/fiber/v2"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

func main() {
	server := &fasthttp.Server{Handler: newHandler(2 * time.Second)}
	log.Fatal(server.ListenAndServe("127.0.0.1:8083"))
}

// newHandler returns the Fiber app bounded by timeout.
func newHandler(timeout time.Duration) fasthttp.RequestHandler {
	app := fiber.New()
	// Fiber's c.UserContext() is context.Background() by default; give it
	// the request's deadline, so that code taking a context stops with it.
	app.Use(func(c *fiber.Ctx) error {
		c.SetUserContext(fasttimeout.Context(c.Context()))
		return c.Next()
	})
	app.Get("/hello", func(c *fiber.Ctx) error {
		return c.SendString("hello from fiber")
	})
	app.Get("/slow", func(c *fiber.Ctx) error {
		select {
		case <-c.UserContext().Done():
			// At the deadline the middleware has answered 504 and this
			// answer goes nowhere; when the server shuts down it is the
			// client's: 503, so that it may retry elsewhere (an error
			// returned here would be Fiber's 500).
			return fiber.ErrServiceUnavailable
		case <-time.After(10 * timeout):
			return c.SendString("too late")
		}
	})
	app.Get("/deadline", func(c *fiber.Ctx) error {
		_, ok := c.UserContext().Deadline()
		if !ok {
			return fiber.ErrInternalServerError
		}
		return c.SendString("has a deadline")
	})
	// HonorDeadlineHeaders believes the caller's grpc-timeout and the like:
	// only behind a proxy you run, where no client can send a spent budget.
	return fasttimeout.New(app.Handler(), fasttimeout.Config{Timeout: timeout, HonorDeadlineHeaders: true})
}
