"""Remember a re-embed in progress: the model and dimensions its shadow store is being built with.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE syncer.sources ADD COLUMN reembed_model text, ADD COLUMN reembed_dimensions integer")


def downgrade() -> None:
    op.execute("ALTER TABLE syncer.sources DROP COLUMN reembed_model, DROP COLUMN reembed_dimensions")
