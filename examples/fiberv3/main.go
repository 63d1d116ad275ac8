// Command fiberv3 shows fasttimeout in front of a Fiber v3 app: the app's
// Handler() is wrapped by fasttimeout.New and served by fasthttp, and a
// Fiber middleware hands the request's deadline to c.Context().
//
// The whole Fiber request runs on the handler's goroutine: Fiber acquires
// its fiber.Ctx, routes, runs the middlewares and the route, and releases
// the fiber.Ctx there. At the deadline fasttimeout answers on the server
// goroutine through the fasthttp.RequestCtx alone (TimeoutErrorWithResponse)
// and never touches the fiber.Ctx, which a late route keeps using until it
// returns. So no fiber.Ctx is shared between goroutines, unlike with Fiber's
// own middleware/timeout, which runs the route on another goroutine with the
// same fiber.Ctx.
//
// Per route: choose timeouts by path with Config.TimeoutFunc and exempt
// routes with Config.Skip (both read the fasthttp.RequestCtx on the server
// goroutine, before Fiber runs); inside a route, pass c.Context() to
// anything slow and use fasttimeout.Extend or Disarm on c.RequestCtx().
package main

import (
	"log"
	"strings"
	"time"

	"github.com/gofiber/fiber/v3"
	"github.com/valyala/fasthttp"

	"github.com/fasttimeout/fasttimeout"
)

func main() {
	server := &fasthttp.Server{Handler: newHandler(2 * time.Second)}
	log.Fatal(server.ListenAndServe("127.0.0.1:8084"))
}

// newHandler returns the Fiber app bounded by timeout; /reports/ routes get
// five times as long.
func newHandler(timeout time.Duration) fasthttp.RequestHandler {
	app := fiber.New()
	// c.Context() is context.Background() by default; give it the request's
	// deadline, so that code taking a context stops with it.
	app.Use(func(c fiber.Ctx) error {
		c.SetContext(fasttimeout.Context(c.RequestCtx()))
		return c.Next()
	})
	app.Get("/hello", func(c fiber.Ctx) error {
		return c.SendString("hello from fiber v3")
	})
	slow := func(c fiber.Ctx) error {
		select {
		case <-c.Context().Done():
			// At the deadline the middleware has answered 504 and this
			// answer goes nowhere; when the server shuts down it is the
			// client's: 503, so that it may retry elsewhere (an error
			// returned here would be Fiber's 500).
			return fiber.ErrServiceUnavailable
		case <-time.After(10 * timeout):
			return c.SendString("too late")
		}
	}
	app.Get("/slow", slow)
	app.Get("/reports/slow", slow)
	app.Get("/deadline", func(c fiber.Ctx) error {
		deadline, ok := c.Context().Deadline()
		if !ok || time.Until(deadline) > timeout {
			return fiber.ErrInternalServerError
		}
		return c.SendString("has the request's deadline")
	})
	return fasttimeout.New(app.Handler(), fasttimeout.Config{
		Timeout: timeout,
		TimeoutFunc: func(ctx *fasthttp.RequestCtx) time.Duration {
			if strings.HasPrefix(string(ctx.Path()), "/reports/") {
				return 5 * timeout
			}
			return 0 // Timeout
		},
	})
}
