"""The task registry: SQLAlchemy models (`models`), the operations on them (`store`), task
definitions checked against the data (`definitions`), engines (`db`) and migrations
(`migrate`, driving the Alembic environment in the `migrations` package)."""
