"""Creating a user from a request, by every path: the models of `POST /api/users`, the request use case
(queue, sync, fallback), the BullMQ queue, the consumer and its runtime limits, `provision()` (the one code path
that makes a user), the welcome email (outbox, mailer, SES client, sending rate), the caller's quota, the kill
switch (`traffic`) and the reconciler. It may import `shared.core` and `shared.bootstrap` (the `Deps` type)."""
