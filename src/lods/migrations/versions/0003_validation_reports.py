"""Local validation reports; the report an approval cites.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 15:03:26.020367

On SQLite the new column of `solution_versions` is added with ALTER TABLE ... ADD
COLUMN ... REFERENCES rather than by batch mode: re-creating the table would drop a table
that deployments, jobs and findings refer to, which SQLite refuses (foreign keys are on)
once there are rows.
"""

from alembic import op
import sqlalchemy as sa
import lods.db


revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

FK_NAME = "fk_solution_versions_approval_report_fk_validation_reports"


def upgrade() -> None:
    op.create_table(
        "validation_reports",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version_fk", sa.Integer(), nullable=False),
        sa.Column("site_code", sa.String(length=32), nullable=True),
        sa.Column("created_at", lods.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("created_by", sa.String(length=100), nullable=False),
        sa.Column("labels_sha256", sa.String(length=64), nullable=False),
        sa.Column("n_cases", sa.Integer(), nullable=False),
        sa.Column("n_positive", sa.Integer(), nullable=False),
        sa.Column("n_excluded", sa.Integer(), nullable=False),
        sa.Column("n_failed", sa.Integer(), nullable=False),
        sa.Column("auc", sa.Float(), nullable=True),
        sa.Column("auc_low", sa.Float(), nullable=True),
        sa.Column("auc_high", sa.Float(), nullable=True),
        sa.Column("sens_doubtful", sa.Float(), nullable=True),
        sa.Column("spec_doubtful", sa.Float(), nullable=True),
        sa.Column("sens_sure", sa.Float(), nullable=True),
        sa.Column("spec_sure", sa.Float(), nullable=True),
        sa.Column("summary", sa.JSON(), nullable=False),
        sa.Column("report_path", sa.String(length=300), nullable=False),
        sa.ForeignKeyConstraint(
            ["version_fk"],
            ["solution_versions.id"],
            name=op.f("fk_validation_reports_version_fk_solution_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_validation_reports")),
    )
    with op.batch_alter_table("validation_reports", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_validation_reports_version_fk"), ["version_fk"], unique=False
        )

    if op.get_bind().dialect.name == "sqlite":
        op.execute(
            "ALTER TABLE solution_versions ADD COLUMN approval_report_fk INTEGER "
            f"CONSTRAINT {FK_NAME} REFERENCES validation_reports (id)"
        )
    else:
        op.add_column(
            "solution_versions", sa.Column("approval_report_fk", sa.Integer(), nullable=True)
        )
        op.create_foreign_key(
            op.f(FK_NAME),
            "solution_versions",
            "validation_reports",
            ["approval_report_fk"],
            ["id"],
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "sqlite":
        # SQLite cannot drop a column that is part of a foreign key without re-creating
        # the table; batch mode does that (its foreign key goes with the column). The
        # re-creation needs that no other table's rows refer to a version yet.
        with op.batch_alter_table("solution_versions", schema=None, recreate="always") as batch_op:
            batch_op.drop_column("approval_report_fk")
    else:
        op.drop_constraint(op.f(FK_NAME), "solution_versions", type_="foreignkey")
        op.drop_column("solution_versions", "approval_report_fk")

    with op.batch_alter_table("validation_reports", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_validation_reports_version_fk"))

    op.drop_table("validation_reports")
