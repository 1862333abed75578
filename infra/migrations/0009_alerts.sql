-- Alerts: one row per watched condition (its state and a version bumped by every transition), and an outbox of
-- the alerts to deliver (webhook, email). A transition and its outbox rows commit together; the conditional
-- UPDATE on alert_states lets only one of several concurrent watchdogs record a given transition.

CREATE TABLE alert_states (
    key        text PRIMARY KEY,
    firing     boolean NOT NULL DEFAULT false,
    version    integer NOT NULL DEFAULT 0,
    message    text,
    changed_at timestamptz NOT NULL DEFAULT now(),
    checked_at timestamptz
);

CREATE TABLE alert_outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    alert_key       text NOT NULL,
    version         integer NOT NULL,
    target          text NOT NULL CHECK (target IN ('webhook', 'email')),
    event           text NOT NULL,
    level           text NOT NULL CHECK (level IN ('WARNING', 'ERROR')),
    state           text NOT NULL CHECK (state IN ('firing', 'resolved')),
    message         text NOT NULL,
    at              timestamptz NOT NULL DEFAULT now(),
    status          text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent')),
    attempts        integer NOT NULL DEFAULT 0,
    last_error      text,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    sent_at         timestamptz,
    -- One delivery per transition and target, whatever the number of watchdogs.
    CONSTRAINT alert_outbox_one_per_transition UNIQUE (alert_key, version, target)
);
CREATE INDEX alert_outbox_pending ON alert_outbox (next_attempt_at) WHERE status = 'pending';
CREATE INDEX alert_outbox_at ON alert_outbox (at);
