"""What an operator sees and does: the switch and system metrics (`admin`), Prometheus export, alerts
(conditions, transitions, delivery, the watchdog), request search and story, retries of failed requests (one and
in bulk), and scheduled maintenance (retention, tick). The top of the domain: it may import every other package."""
