"""Patient monitoring: beds, encounters and bed stays, HL7 messages, vital signs (and the
newest of each per patient), early-warning scores, patient options, sensor events, fall
risk and incidents, and the alert lifecycle (notified, repeated, escalated) with its events.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 19:18:36.198092
"""

from alembic import op
import sqlalchemy as sa
import lods.db


revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "hl7_messages",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sender", sa.String(length=200), nullable=False),
        sa.Column("control_id", sa.String(length=64), nullable=False),
        sa.Column("message_type", sa.String(length=20), nullable=False),
        sa.Column("received_at", lods.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ack_code", sa.String(length=2), nullable=False),
        sa.Column("ack_text", sa.Text(), nullable=False),
        sa.Column("raw", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_hl7_messages")),
        sa.UniqueConstraint("sender", "control_id", name=op.f("uq_hl7_messages_sender")),
    )
    with op.batch_alter_table("hl7_messages", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_hl7_messages_received_at"), ["received_at"], unique=False
        )

    op.create_table(
        "patient_options",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_fk", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("set_by", sa.String(length=100), nullable=False),
        sa.Column("set_at", lods.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", lods.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("revoked_by", sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(
            ["patient_fk"], ["patients.id"], name=op.f("fk_patient_options_patient_fk_patients")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_patient_options")),
    )
    with op.batch_alter_table("patient_options", schema=None) as batch_op:
        batch_op.create_index("ix_patient_options_patient_key", ["patient_fk", "key"], unique=False)

    op.create_table(
        "beds",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ward_id", sa.Integer(), nullable=False),
        sa.Column("code", sa.String(length=32), nullable=False),
        sa.Column("room", sa.String(length=32), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["ward_id"], ["departments.id"], name=op.f("fk_beds_ward_id_departments")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_beds")),
        sa.UniqueConstraint("ward_id", "code", name=op.f("uq_beds_ward_id")),
    )
    with op.batch_alter_table("beds", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_beds_ward_id"), ["ward_id"], unique=False)

    # Batch (copy-and-move on SQLite) is safe here: no earlier table references alerts,
    # and the new ones that do are created after this.
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("ward_fk", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("bed_fk", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("patient_fk", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("notified_at", lods.db.UTCDateTime(timezone=True)))
        batch_op.add_column(sa.Column("repeat_seconds", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("escalate_after", sa.Integer(), nullable=True))
        batch_op.add_column(
            sa.Column("notifications", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("next_notify_at", lods.db.UTCDateTime(timezone=True)))
        batch_op.add_column(
            sa.Column("escalation_level", sa.Integer(), server_default="0", nullable=False)
        )
        batch_op.add_column(sa.Column("escalated_at", lods.db.UTCDateTime(timezone=True)))
        batch_op.add_column(sa.Column("outcome", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("facts", sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f("ix_alerts_next_notify_at"), ["next_notify_at"])
        batch_op.create_index(batch_op.f("ix_alerts_ward_fk"), ["ward_fk"])
        batch_op.create_foreign_key(
            batch_op.f("fk_alerts_ward_fk_departments"), "departments", ["ward_fk"], ["id"]
        )
        batch_op.create_foreign_key(batch_op.f("fk_alerts_bed_fk_beds"), "beds", ["bed_fk"], ["id"])
        batch_op.create_foreign_key(
            batch_op.f("fk_alerts_patient_fk_patients"), "patients", ["patient_fk"], ["id"]
        )

    op.create_table(
        "encounters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_fk", sa.Integer(), nullable=False),
        sa.Column("site_id", sa.Integer(), nullable=False),
        sa.Column("visit_number", sa.String(length=64), nullable=False),
        sa.Column("ward_fk", sa.Integer(), nullable=True),
        sa.Column("bed_fk", sa.Integer(), nullable=True),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("admitted_at", lods.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("discharged_at", lods.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("updated_at", lods.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("bed_exit_alerts", sa.Boolean(), nullable=True),
        sa.Column("bed_exit_set_by", sa.String(length=100), nullable=True),
        sa.Column("bed_exit_set_at", lods.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["bed_fk"], ["beds.id"], name=op.f("fk_encounters_bed_fk_beds")),
        sa.ForeignKeyConstraint(
            ["patient_fk"], ["patients.id"], name=op.f("fk_encounters_patient_fk_patients")
        ),
        sa.ForeignKeyConstraint(
            ["site_id"], ["sites.id"], name=op.f("fk_encounters_site_id_sites")
        ),
        sa.ForeignKeyConstraint(
            ["ward_fk"], ["departments.id"], name=op.f("fk_encounters_ward_fk_departments")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_encounters")),
        sa.UniqueConstraint("site_id", "visit_number", name=op.f("uq_encounters_site_id")),
    )
    with op.batch_alter_table("encounters", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_encounters_bed_fk"), ["bed_fk"], unique=False)
        batch_op.create_index(batch_op.f("ix_encounters_patient_fk"), ["patient_fk"], unique=False)
        batch_op.create_index(batch_op.f("ix_encounters_site_id"), ["site_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_encounters_state"), ["state"], unique=False)
        batch_op.create_index(batch_op.f("ix_encounters_ward_fk"), ["ward_fk"], unique=False)

    op.create_table(
        "alert_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("alert_fk", sa.Integer(), nullable=False),
        sa.Column("step", sa.String(length=16), nullable=False),
        sa.Column("actor", sa.String(length=100), nullable=False),
        sa.Column("at", lods.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["alert_fk"], ["alerts.id"], name=op.f("fk_alert_events_alert_fk_alerts")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_alert_events")),
    )
    with op.batch_alter_table("alert_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_alert_events_alert_fk"), ["alert_fk"], unique=False)

    op.create_table(
        "bed_stays",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("encounter_fk", sa.Integer(), nullable=False),
        sa.Column("ward_fk", sa.Integer(), nullable=False),
        sa.Column("bed_fk", sa.Integer(), nullable=True),
        sa.Column("started_at", lods.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", lods.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["bed_fk"], ["beds.id"], name=op.f("fk_bed_stays_bed_fk_beds")),
        sa.ForeignKeyConstraint(
            ["encounter_fk"], ["encounters.id"], name=op.f("fk_bed_stays_encounter_fk_encounters")
        ),
        sa.ForeignKeyConstraint(
            ["ward_fk"], ["departments.id"], name=op.f("fk_bed_stays_ward_fk_departments")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bed_stays")),
    )
    with op.batch_alter_table("bed_stays", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_bed_stays_bed_fk"), ["bed_fk"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_bed_stays_encounter_fk"), ["encounter_fk"], unique=False
        )
        batch_op.create_index("ix_bed_stays_ward_time", ["ward_fk", "started_at"], unique=False)

    op.create_table(
        "ews_scores",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_fk", sa.Integer(), nullable=False),
        sa.Column("encounter_fk", sa.Integer(), nullable=True),
        sa.Column("bed_fk", sa.Integer(), nullable=True),
        sa.Column("version_fk", sa.Integer(), nullable=False),
        sa.Column("deployment_fk", sa.Integer(), nullable=False),
        sa.Column("score_name", sa.String(length=40), nullable=False),
        sa.Column("computed_at", lods.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("observed_at", lods.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("complete", sa.Boolean(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=True),
        sa.Column("band", sa.String(length=32), nullable=True),
        sa.Column("missing", sa.JSON(), nullable=False),
        sa.Column("parts", sa.JSON(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("next_due_minutes", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(["bed_fk"], ["beds.id"], name=op.f("fk_ews_scores_bed_fk_beds")),
        sa.ForeignKeyConstraint(
            ["deployment_fk"],
            ["deployments.id"],
            name=op.f("fk_ews_scores_deployment_fk_deployments"),
        ),
        sa.ForeignKeyConstraint(
            ["encounter_fk"], ["encounters.id"], name=op.f("fk_ews_scores_encounter_fk_encounters")
        ),
        sa.ForeignKeyConstraint(
            ["patient_fk"], ["patients.id"], name=op.f("fk_ews_scores_patient_fk_patients")
        ),
        sa.ForeignKeyConstraint(
            ["version_fk"],
            ["solution_versions.id"],
            name=op.f("fk_ews_scores_version_fk_solution_versions"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_ews_scores")),
    )
    with op.batch_alter_table("ews_scores", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_ews_scores_encounter_fk"), ["encounter_fk"], unique=False
        )
        batch_op.create_index(
            "ix_ews_scores_patient_time", ["patient_fk", "computed_at"], unique=False
        )
        batch_op.create_index(batch_op.f("ix_ews_scores_version_fk"), ["version_fk"], unique=False)

    op.create_table(
        "fall_incidents",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("ward_fk", sa.Integer(), nullable=False),
        sa.Column("bed_fk", sa.Integer(), nullable=True),
        sa.Column("patient_fk", sa.Integer(), nullable=True),
        sa.Column("encounter_fk", sa.Integer(), nullable=True),
        sa.Column("alert_fk", sa.Integer(), nullable=True),
        sa.Column("occurred_at", lods.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("outcome", sa.String(length=16), nullable=False),
        sa.Column("injury_grade", sa.String(length=16), nullable=True),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("recorded_by", sa.String(length=100), nullable=False),
        sa.Column("recorded_at", lods.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["alert_fk"], ["alerts.id"], name=op.f("fk_fall_incidents_alert_fk_alerts")
        ),
        sa.ForeignKeyConstraint(
            ["bed_fk"], ["beds.id"], name=op.f("fk_fall_incidents_bed_fk_beds")
        ),
        sa.ForeignKeyConstraint(
            ["encounter_fk"],
            ["encounters.id"],
            name=op.f("fk_fall_incidents_encounter_fk_encounters"),
        ),
        sa.ForeignKeyConstraint(
            ["patient_fk"], ["patients.id"], name=op.f("fk_fall_incidents_patient_fk_patients")
        ),
        sa.ForeignKeyConstraint(
            ["ward_fk"], ["departments.id"], name=op.f("fk_fall_incidents_ward_fk_departments")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fall_incidents")),
        sa.UniqueConstraint("alert_fk", name=op.f("uq_fall_incidents_alert_fk")),
    )
    with op.batch_alter_table("fall_incidents", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_fall_incidents_patient_fk"), ["patient_fk"], unique=False
        )
        batch_op.create_index(
            "ix_fall_incidents_ward_time", ["ward_fk", "occurred_at"], unique=False
        )

    op.create_table(
        "fall_risk_assessments",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_fk", sa.Integer(), nullable=False),
        sa.Column("encounter_fk", sa.Integer(), nullable=True),
        sa.Column("items", sa.JSON(), nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("level", sa.String(length=16), nullable=False),
        sa.Column("cutoffs", sa.JSON(), nullable=False),
        sa.Column("assessed_by", sa.String(length=100), nullable=False),
        sa.Column("assessed_at", lods.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["encounter_fk"],
            ["encounters.id"],
            name=op.f("fk_fall_risk_assessments_encounter_fk_encounters"),
        ),
        sa.ForeignKeyConstraint(
            ["patient_fk"],
            ["patients.id"],
            name=op.f("fk_fall_risk_assessments_patient_fk_patients"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_fall_risk_assessments")),
    )
    with op.batch_alter_table("fall_risk_assessments", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_fall_risk_assessments_encounter_fk"), ["encounter_fk"], unique=False
        )
        batch_op.create_index(
            "ix_fall_risk_patient_time", ["patient_fk", "assessed_at"], unique=False
        )

    op.create_table(
        "sensor_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("event_id", sa.String(length=100), nullable=False),
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("ward_fk", sa.Integer(), nullable=False),
        sa.Column("bed_fk", sa.Integer(), nullable=True),
        sa.Column("room", sa.String(length=32), nullable=False),
        sa.Column("encounter_fk", sa.Integer(), nullable=True),
        sa.Column("occurred_at", lods.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("received_at", lods.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("confidence", sa.Float(), nullable=True),
        sa.Column("source", sa.String(length=8), nullable=False),
        sa.Column("device_id", sa.String(length=100), nullable=False),
        sa.Column("outcome", sa.String(length=64), nullable=False),
        sa.Column("alert_fk", sa.Integer(), nullable=True),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["alert_fk"], ["alerts.id"], name=op.f("fk_sensor_events_alert_fk_alerts")
        ),
        sa.ForeignKeyConstraint(["bed_fk"], ["beds.id"], name=op.f("fk_sensor_events_bed_fk_beds")),
        sa.ForeignKeyConstraint(
            ["encounter_fk"],
            ["encounters.id"],
            name=op.f("fk_sensor_events_encounter_fk_encounters"),
        ),
        sa.ForeignKeyConstraint(
            ["ward_fk"], ["departments.id"], name=op.f("fk_sensor_events_ward_fk_departments")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sensor_events")),
        sa.UniqueConstraint("event_id", name=op.f("uq_sensor_events_event_id")),
    )
    with op.batch_alter_table("sensor_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sensor_events_bed_fk"), ["bed_fk"], unique=False)
        batch_op.create_index(
            batch_op.f("ix_sensor_events_encounter_fk"), ["encounter_fk"], unique=False
        )
        batch_op.create_index(
            "ix_sensor_events_ward_time", ["ward_fk", "occurred_at"], unique=False
        )

    op.create_table(
        "vital_observations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("patient_fk", sa.Integer(), nullable=False),
        sa.Column("encounter_fk", sa.Integer(), nullable=True),
        sa.Column("bed_fk", sa.Integer(), nullable=True),
        sa.Column("parameter", sa.String(length=32), nullable=False),
        sa.Column("loinc", sa.String(length=16), nullable=False),
        sa.Column("mdc_code", sa.String(length=16), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("value_text", sa.String(length=32), nullable=True),
        sa.Column("unit", sa.String(length=16), nullable=False),
        sa.Column("observed_at", lods.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("received_at", lods.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("valid", sa.Boolean(), nullable=False),
        sa.Column("invalid_reason", sa.String(length=200), nullable=True),
        sa.Column("source", sa.String(length=16), nullable=False),
        sa.Column("message_fk", sa.Integer(), nullable=True),
        sa.Column("entered_by", sa.String(length=100), nullable=True),
        sa.ForeignKeyConstraint(
            ["bed_fk"], ["beds.id"], name=op.f("fk_vital_observations_bed_fk_beds")
        ),
        sa.ForeignKeyConstraint(
            ["encounter_fk"],
            ["encounters.id"],
            name=op.f("fk_vital_observations_encounter_fk_encounters"),
        ),
        sa.ForeignKeyConstraint(
            ["message_fk"],
            ["hl7_messages.id"],
            name=op.f("fk_vital_observations_message_fk_hl7_messages"),
        ),
        sa.ForeignKeyConstraint(
            ["patient_fk"], ["patients.id"], name=op.f("fk_vital_observations_patient_fk_patients")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_vital_observations")),
    )
    with op.batch_alter_table("vital_observations", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_vital_observations_encounter_fk"), ["encounter_fk"], unique=False
        )
        batch_op.create_index(
            batch_op.f("ix_vital_observations_message_fk"), ["message_fk"], unique=False
        )
        batch_op.create_index(
            "ix_vital_observations_patient_time", ["patient_fk", "observed_at"], unique=False
        )

    op.create_table(
        "latest_vitals",
        sa.Column("patient_fk", sa.Integer(), nullable=False),
        sa.Column("parameter", sa.String(length=32), nullable=False),
        sa.Column("observation_fk", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("value_text", sa.String(length=32), nullable=True),
        sa.Column("observed_at", lods.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["observation_fk"],
            ["vital_observations.id"],
            name=op.f("fk_latest_vitals_observation_fk_vital_observations"),
        ),
        sa.ForeignKeyConstraint(
            ["patient_fk"], ["patients.id"], name=op.f("fk_latest_vitals_patient_fk_patients")
        ),
        sa.PrimaryKeyConstraint("patient_fk", "parameter", name=op.f("pk_latest_vitals")),
    )


def downgrade() -> None:
    op.drop_table("latest_vitals")
    with op.batch_alter_table("vital_observations", schema=None) as batch_op:
        batch_op.drop_index("ix_vital_observations_patient_time")
        batch_op.drop_index(batch_op.f("ix_vital_observations_message_fk"))
        batch_op.drop_index(batch_op.f("ix_vital_observations_encounter_fk"))

    op.drop_table("vital_observations")
    with op.batch_alter_table("sensor_events", schema=None) as batch_op:
        batch_op.drop_index("ix_sensor_events_ward_time")
        batch_op.drop_index(batch_op.f("ix_sensor_events_encounter_fk"))
        batch_op.drop_index(batch_op.f("ix_sensor_events_bed_fk"))

    op.drop_table("sensor_events")
    with op.batch_alter_table("fall_risk_assessments", schema=None) as batch_op:
        batch_op.drop_index("ix_fall_risk_patient_time")
        batch_op.drop_index(batch_op.f("ix_fall_risk_assessments_encounter_fk"))

    op.drop_table("fall_risk_assessments")
    with op.batch_alter_table("fall_incidents", schema=None) as batch_op:
        batch_op.drop_index("ix_fall_incidents_ward_time")
        batch_op.drop_index(batch_op.f("ix_fall_incidents_patient_fk"))

    op.drop_table("fall_incidents")
    with op.batch_alter_table("ews_scores", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_ews_scores_version_fk"))
        batch_op.drop_index("ix_ews_scores_patient_time")
        batch_op.drop_index(batch_op.f("ix_ews_scores_encounter_fk"))

    op.drop_table("ews_scores")
    with op.batch_alter_table("bed_stays", schema=None) as batch_op:
        batch_op.drop_index("ix_bed_stays_ward_time")
        batch_op.drop_index(batch_op.f("ix_bed_stays_encounter_fk"))
        batch_op.drop_index(batch_op.f("ix_bed_stays_bed_fk"))

    op.drop_table("bed_stays")
    with op.batch_alter_table("alert_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_alert_events_alert_fk"))

    op.drop_table("alert_events")
    with op.batch_alter_table("encounters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_encounters_ward_fk"))
        batch_op.drop_index(batch_op.f("ix_encounters_state"))
        batch_op.drop_index(batch_op.f("ix_encounters_site_id"))
        batch_op.drop_index(batch_op.f("ix_encounters_patient_fk"))
        batch_op.drop_index(batch_op.f("ix_encounters_bed_fk"))

    # alerts once the tables that referenced it are gone, before beds (which it references).
    with op.batch_alter_table("alerts", schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f("fk_alerts_patient_fk_patients"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("fk_alerts_bed_fk_beds"), type_="foreignkey")
        batch_op.drop_constraint(batch_op.f("fk_alerts_ward_fk_departments"), type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_alerts_ward_fk"))
        batch_op.drop_index(batch_op.f("ix_alerts_next_notify_at"))
        batch_op.drop_column("facts")
        batch_op.drop_column("outcome")
        batch_op.drop_column("escalated_at")
        batch_op.drop_column("escalation_level")
        batch_op.drop_column("next_notify_at")
        batch_op.drop_column("notifications")
        batch_op.drop_column("escalate_after")
        batch_op.drop_column("repeat_seconds")
        batch_op.drop_column("notified_at")
        batch_op.drop_column("patient_fk")
        batch_op.drop_column("bed_fk")
        batch_op.drop_column("ward_fk")

    op.drop_table("encounters")
    with op.batch_alter_table("beds", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_beds_ward_id"))

    op.drop_table("beds")
    with op.batch_alter_table("patient_options", schema=None) as batch_op:
        batch_op.drop_index("ix_patient_options_patient_key")

    op.drop_table("patient_options")
    with op.batch_alter_table("hl7_messages", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_hl7_messages_received_at"))

    op.drop_table("hl7_messages")
