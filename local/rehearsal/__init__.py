"""`invoke rehearse`: the rendered Google Cloud deployment run on this machine, with one local stand-in per
managed part (docs/rehearsal.md): `rendered` (reads the rendering), `pki`, `google_identity`, `secret_manager`,
`cloud_sql`, `memorystore`, `cloud_run`, `front` (the load balancer), `scheduler`, `run`, `suite`, `cli`."""
