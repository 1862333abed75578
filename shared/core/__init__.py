"""The ports every capability uses: settings, PostgreSQL (`db`), Redis (`redis_import`), errors, bearer
auth and identity, health events, the audit trail, what stripping a person's data from a row means
(`personal_data`), the circuit breaker, the rate-limit gate, transitions and
tracing. It owns no business rule of its own and imports nothing of `shared` outside `shared.core`."""
