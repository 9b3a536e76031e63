"""The registry's Alembic environment (env.py, script.py.mako, versions/), shipped with the
package so that an installed copy migrates its registry too; `registry.migrate` drives it."""
