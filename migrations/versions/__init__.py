"""Migration versions, applied in order by Alembic; each file is one revision."""
