"""Staff accounts and everything a person signs in with: making accounts (through `shared.creation`'s
provisioning path), Argon2id passwords, the set-password link, sign-in and its throttle, and the erase of a
person. It may import `shared.core`, `shared.creation` and `shared.bootstrap`."""
