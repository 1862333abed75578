"""What an operator sees and does: the switch and system metrics (`admin`), Prometheus export, alerts
(conditions, transitions, delivery, the watchdog), request search and story, retries of failed requests (one and
in bulk), scheduled maintenance (retention, personal-data retention, tick) and the personal-data scanner
(`invoke pii-scan`). The top of the domain: it may import every other package."""
