"""Outbound delivery: the dispatcher that works the outbox (app.services.outbox) and the channels that carry
its messages to other systems, each telling transient failures (try again later) from permanent ones
(dead letter) - DESIGN.md 3, "Out"."""
