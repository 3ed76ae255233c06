"""Remember each source's text definition (columns or template, and key), as its model is remembered.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-30
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE syncer.sources ADD COLUMN definition jsonb")
    op.execute(
        "COMMENT ON COLUMN syncer.sources.definition IS "
        "'What makes a row''s text (columns or template) and its key; workers with another definition do not write'"
    )


def downgrade() -> None:
    op.execute("ALTER TABLE syncer.sources DROP COLUMN definition")
