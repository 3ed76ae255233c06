"""syncer's own schema: the registry of sources, the change sequence, the notify trigger.

Revision ID: 0001
Revises:
Create Date: 2026-11-27
"""

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.execute("CREATE SCHEMA IF NOT EXISTS syncer")
    op.execute(
        """
        CREATE TABLE syncer.sources (
            name          text PRIMARY KEY,
            source_table  text NOT NULL,
            store_table   text NOT NULL,
            model         text NOT NULL,
            dimensions    integer NOT NULL,
            config        jsonb NOT NULL,
            created_at    timestamptz NOT NULL DEFAULT now(),
            backfilled_at timestamptz
        )
        """
    )
    op.execute("COMMENT ON TABLE syncer.sources IS 'Sources syncer keeps embedded, one row each'")
    # Every recorded change takes the next number: a queue row whose number moved was changed again.
    op.execute("CREATE SEQUENCE syncer.change_seq")
    op.execute(
        """
        CREATE FUNCTION syncer.notify_v1() RETURNS trigger
        LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
        BEGIN
            -- A hint only: polling finds the change anyway, so never risk the writer's commit
            -- on a filling notification queue.
            IF pg_notification_queue_usage() < 0.5 THEN
                PERFORM pg_notify('syncer', TG_ARGV[0]);
            END IF;
            RETURN NULL;
        END
        $$
        """
    )
    op.execute("REVOKE ALL ON FUNCTION syncer.notify_v1() FROM PUBLIC")


def downgrade() -> None:
    op.execute("DROP FUNCTION syncer.notify_v1()")
    op.execute("DROP SEQUENCE syncer.change_seq")
    op.execute("DROP TABLE syncer.sources")
