"""A webinar's buyers in one upload: parsing a CSV or JSON file (`parse`), recording the accepted rows as
creation requests and queueing them (`upload`), and the drain that makes the rows recorded while the queue was
off (`drain`, run by every consumer and the scheduled `bulk_drain`). It may import `shared.core`,
`shared.creation` and `shared.bootstrap`."""
