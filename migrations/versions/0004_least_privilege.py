"""Least privilege: what the worker calls instead of touching the registry or the catalog itself.

- ``syncer.sources.objects``: a fingerprint of the per-source objects `syncer apply` installed, so
  that an unchanged configuration is recognised without any DDL.
- ``syncer.applied_v1(name)``: the registry row of a source, locked FOR SHARE for the calling
  transaction (a settle): no re-embed switch or definition adoption commits while it writes. A
  worker may execute it without the UPDATE privilege that FOR SHARE needs.
- ``syncer.pending_rows(cap)``: keys ready to be claimed over every source, changes logged and not yet
  queued included (for autoscalers).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-30
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE syncer.sources ADD COLUMN objects text")
    op.execute(
        """
        CREATE FUNCTION syncer.applied_v1(source text)
        RETURNS TABLE (model text, reembed_model text, definition jsonb)
        LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
            SELECT s.model, s.reembed_model, s.definition FROM syncer.sources s WHERE s.name = source FOR SHARE
        $$
        """
    )
    op.execute("REVOKE ALL ON FUNCTION syncer.applied_v1(text) FROM PUBLIC")
    op.execute(
        """
        CREATE FUNCTION syncer.pending_rows(cap bigint DEFAULT 1000000) RETURNS bigint
        LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
        DECLARE
            total bigint := 0;
            part bigint;
            name text;
        BEGIN
            FOR name IN SELECT s.name FROM syncer.sources s ORDER BY s.name LOOP
                EXECUTE format(
                    'SELECT count(*) FROM (SELECT FROM syncer.%I WHERE dead_at IS NULL AND not_before <= now() '
                    'AND (lease_until IS NULL OR lease_until < now()) LIMIT $1) ready', name || '_queue')
                INTO part USING greatest(cap - total, 0);
                total := total + part;
                IF to_regclass(format('syncer.%I', name || '_log')) IS NOT NULL THEN
                    EXECUTE format('SELECT coalesce(sum(changed), 0) FROM syncer.%I', name || '_log') INTO part;
                    total := total + part;
                END IF;
            END LOOP;
            RETURN least(total, cap);
        END
        $$
        """
    )
    op.execute(
        "COMMENT ON FUNCTION syncer.pending_rows(bigint) IS "
        "'Keys ready to be claimed over every source (logged changes included), counted up to cap: "
        "the queue depth to scale workers on'"
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION syncer.pending_rows(bigint)")
    op.execute("DROP FUNCTION syncer.applied_v1(text)")
    op.execute("ALTER TABLE syncer.sources DROP COLUMN objects")
