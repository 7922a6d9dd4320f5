"""Initial schema: hosts, peers, blobs, availability bitmaps, preheat jobs, blacklist, events.

Revision ID: 0001
Revises: (none)
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "blacklist",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("peer_id", sa.String(length=255), nullable=False),
        sa.Column("blob_id", sa.String(length=255), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_blacklist")),
        sa.UniqueConstraint("peer_id", "blob_id", name="uq_blacklist_peer_blob"),
    )
    op.create_table(
        "blobs",
        sa.Column("blob_id", sa.String(length=255), nullable=False),
        sa.Column("chunk_count", sa.Integer(), nullable=False),
        sa.Column("size", sa.BigInteger(), nullable=False),
        sa.Column("origin", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("blob_id", name=op.f("pk_blobs")),
    )
    op.create_table(
        "hosts",
        sa.Column("host_id", sa.String(length=255), nullable=False),
        sa.Column("hostname", sa.String(length=255), nullable=False),
        sa.Column("ip", sa.String(length=64), nullable=False),
        sa.Column("zone", sa.String(length=255), nullable=False),
        sa.Column("labels", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("host_id", name=op.f("pk_hosts")),
    )
    op.create_table(
        "preheat_jobs",
        sa.Column("job_id", sa.String(length=255), nullable=False),
        sa.Column("state", sa.String(length=32), nullable=False),
        sa.Column("image", sa.Text(), nullable=False),
        sa.Column("blobs", sa.JSON(), nullable=False),
        sa.Column("blobs_done", sa.Integer(), nullable=False),
        sa.Column("chunks_total", sa.BigInteger(), nullable=False),
        sa.Column("chunks_done", sa.BigInteger(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("job_id", name=op.f("pk_preheat_jobs")),
    )
    op.create_table(
        "reputation_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("peer_id", sa.String(length=255), nullable=False),
        sa.Column("blob_id", sa.String(length=255), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("delta", sa.Float(), nullable=False),
        sa.Column("detail", sa.Text(), nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_reputation_events")),
    )
    op.create_index("ix_reputation_events_peer_id", "reputation_events", ["peer_id"])

    op.create_table(
        "peers",
        sa.Column("peer_id", sa.String(length=255), nullable=False),
        sa.Column("host_id", sa.String(length=255), nullable=False),
        sa.Column("is_seed", sa.Boolean(), nullable=False),
        sa.Column("upload_capacity", sa.Integer(), nullable=False),
        sa.Column("http_url", sa.Text(), nullable=False),
        sa.Column("multiaddrs", sa.JSON(), nullable=False),
        sa.Column("registration", sa.JSON(), nullable=False),
        sa.Column("registered_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.host_id"], name=op.f("fk_peers_host_id_hosts"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("peer_id", name=op.f("pk_peers")),
    )
    op.create_index("ix_peers_host_id", "peers", ["host_id"])

    op.create_table(
        "availability",
        sa.Column("peer_id", sa.String(length=255), nullable=False),
        sa.Column("blob_id", sa.String(length=255), nullable=False),
        sa.Column("bitmap", sa.LargeBinary(), nullable=False),
        sa.Column("chunks_held", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["blob_id"],
            ["blobs.blob_id"],
            name=op.f("fk_availability_blob_id_blobs"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["peer_id"],
            ["peers.peer_id"],
            name=op.f("fk_availability_peer_id_peers"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("peer_id", "blob_id", name=op.f("pk_availability")),
    )
    op.create_index("ix_availability_blob_id", "availability", ["blob_id"])


def downgrade() -> None:
    op.drop_index("ix_availability_blob_id", table_name="availability")
    op.drop_table("availability")
    op.drop_index("ix_peers_host_id", table_name="peers")
    op.drop_table("peers")
    op.drop_index("ix_reputation_events_peer_id", table_name="reputation_events")
    op.drop_table("reputation_events")
    op.drop_table("preheat_jobs")
    op.drop_table("hosts")
    op.drop_table("blobs")
    op.drop_table("blacklist")
