"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-12-04 09:13:49.078276
"""
from alembic import op
import sqlalchemy as sa


revision = '0001'
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('api_tokens',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('role', sa.Enum('technologist', 'scheduler', 'radiologist', 'analyst', 'administrator', name='role', native_enum=False, length=24), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('revoked', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('digest'),
    sa.UniqueConstraint('name')
    )
    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('role', sa.String(length=24), nullable=False),
    sa.Column('action', sa.String(length=32), nullable=False),
    sa.Column('entity', sa.String(length=32), nullable=False),
    sa.Column('entity_id', sa.String(length=64), nullable=False),
    sa.Column('patient_key', sa.String(length=64), nullable=False),
    sa.Column('detail', sa.Text(), nullable=False),
    sa.Column('source', sa.String(length=128), nullable=False),
    sa.Column('channel', sa.String(length=16), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.create_index('ix_audit_at', ['at'], unique=False)
        batch_op.create_index('ix_audit_patient', ['patient_key', 'at'], unique=False)
        batch_op.create_index('ix_audit_user', ['username', 'at'], unique=False)

    op.create_table('daily_statistics',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('day', sa.Date(), nullable=False),
    sa.Column('figures', sa.JSON(), nullable=False),
    sa.Column('computed_by', sa.String(length=128), nullable=False),
    sa.Column('computed_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('day')
    )
    op.create_table('inbound_messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('received_at', sa.DateTime(), nullable=False),
    sa.Column('transport', sa.String(length=16), nullable=False),
    sa.Column('peer', sa.String(length=128), nullable=False),
    sa.Column('raw', sa.LargeBinary(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('digest', sa.String(length=64), nullable=False),
    sa.Column('sender', sa.String(length=255), nullable=False),
    sa.Column('control_id', sa.String(length=199), nullable=False),
    sa.Column('message_type', sa.String(length=32), nullable=False),
    sa.Column('charset', sa.String(length=32), nullable=False),
    sa.Column('status', sa.Enum('RECEIVED', 'PROCESSED', 'ERROR', 'REJECTED', 'DUPLICATE', name='messagestatus', native_enum=False, length=24), nullable=False),
    sa.Column('ack_code', sa.String(length=2), nullable=False),
    sa.Column('ack', sa.LargeBinary(), nullable=True),
    sa.Column('reply', sa.LargeBinary(), nullable=True),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('warnings', sa.Text(), nullable=False),
    sa.Column('profile', sa.String(length=128), nullable=False),
    sa.Column('duplicate_of_fk', sa.Integer(), nullable=True),
    sa.Column('batch_fk', sa.Integer(), nullable=True),
    sa.Column('patient_key', sa.String(length=64), nullable=False),
    sa.Column('accession_number', sa.String(length=16), nullable=False),
    sa.Column('changes', sa.JSON(), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('processed_at', sa.DateTime(), nullable=True),
    sa.Column('duration_ms', sa.Float(), nullable=True),
    sa.Column('claimed_by', sa.String(length=128), server_default='', nullable=False),
    sa.Column('claimed_until', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['batch_fk'], ['inbound_messages.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['duplicate_of_fk'], ['inbound_messages.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.create_index('ix_inbound_dedup', ['sender', 'control_id', 'digest'], unique=False)
        batch_op.create_index(batch_op.f('ix_inbound_messages_accession_number'), ['accession_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_inbound_messages_batch_fk'), ['batch_fk'], unique=False)
        batch_op.create_index(batch_op.f('ix_inbound_messages_patient_key'), ['patient_key'], unique=False)
        batch_op.create_index('ix_inbound_status', ['status', 'received_at'], unique=False)

    op.create_table('patients',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('issuer', sa.String(length=64), nullable=False),
    sa.Column('name', sa.String(length=324), nullable=False),
    sa.Column('birth_date', sa.Date(), nullable=True),
    sa.Column('sex', sa.String(length=16), nullable=False),
    sa.Column('version', sa.Integer(), server_default='1', nullable=False),
    sa.Column('merged_into_fk', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['merged_into_fk'], ['patients.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('patient_id', 'issuer', name='uq_patient_key'),
    sqlite_autoincrement=True
    )
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_patients_merged_into_fk'), ['merged_into_fk'], unique=False)
        batch_op.create_index('ix_patients_name', ['name'], unique=False, postgresql_ops={'name': 'text_pattern_ops'})

    op.create_table('resource_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('resource_type', sa.String(length=32), nullable=False),
    sa.Column('resource_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.Integer(), nullable=False),
    sa.Column('recorded_at', sa.DateTime(), nullable=False),
    sa.Column('content', sa.JSON(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('resource_type', 'resource_id', 'version', name='uq_resource_version')
    )
    op.create_table('resources',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('ae_title', sa.String(length=16), nullable=False),
    sa.Column('station_name', sa.String(length=16), nullable=False),
    sa.Column('modalities', sa.JSON(), nullable=False),
    sa.Column('opening_hours', sa.JSON(), nullable=False),
    sa.Column('default_minutes', sa.Integer(), nullable=False),
    sa.Column('slot_minutes', sa.JSON(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_table('subscriptions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('status', sa.Enum('requested', 'active', 'error', 'off', name='subscriptionstatus', native_enum=False, length=24), nullable=False),
    sa.Column('topic', sa.String(length=32), nullable=False),
    sa.Column('criteria', sa.String(length=1000), nullable=False),
    sa.Column('endpoint', sa.String(length=1000), nullable=False),
    sa.Column('base_url', sa.String(length=255), nullable=False),
    sa.Column('headers', sa.JSON(), nullable=False),
    sa.Column('payload', sa.String(length=64), nullable=False),
    sa.Column('content', sa.String(length=16), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('end_at', sa.DateTime(), nullable=True),
    sa.Column('events', sa.Integer(), nullable=False),
    sa.Column('error', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.create_index('ix_subscriptions_topic', ['topic', 'status'], unique=False)

    op.create_table('users',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('username', sa.String(length=64), nullable=False),
    sa.Column('full_name', sa.String(length=128), nullable=False),
    sa.Column('role', sa.Enum('technologist', 'scheduler', 'radiologist', 'analyst', 'administrator', name='role', native_enum=False, length=24), nullable=False),
    sa.Column('password_hash', sa.String(length=255), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('last_login_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('username')
    )
    op.create_table('orders',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_fk', sa.Integer(), nullable=False),
    sa.Column('placer_order_number', sa.String(length=64), nullable=False),
    sa.Column('placer_issuer', sa.String(length=64), nullable=False),
    sa.Column('filler_order_number', sa.String(length=64), nullable=False),
    sa.Column('accession_number', sa.String(length=16), nullable=False),
    sa.Column('status', sa.Enum('SCHEDULED', 'HELD', 'IN_PROGRESS', 'COMPLETED', 'CANCELLED', 'DISCONTINUED', name='orderstatus', native_enum=False, length=24), nullable=False),
    sa.Column('priority', sa.String(length=16), nullable=False),
    sa.Column('referring_physician', sa.String(length=324), nullable=False),
    sa.Column('requesting_physician', sa.String(length=324), nullable=False),
    sa.Column('reason', sa.Text(), nullable=False),
    sa.Column('sender', sa.String(length=128), nullable=False),
    sa.Column('source_message_fk', sa.Integer(), nullable=True),
    sa.Column('version', sa.Integer(), server_default='1', nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['patient_fk'], ['patients.id'], ),
    sa.ForeignKeyConstraint(['source_message_fk'], ['inbound_messages.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.create_index('ix_orders_accession', ['accession_number'], unique=False)
        batch_op.create_index('ix_orders_filler', ['filler_order_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_orders_patient_fk'), ['patient_fk'], unique=False)
        batch_op.create_index('ix_orders_placer', ['placer_order_number', 'placer_issuer'], unique=False)

    op.create_table('visits',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('patient_fk', sa.Integer(), nullable=False),
    sa.Column('visit_number', sa.String(length=64), nullable=False),
    sa.Column('patient_class', sa.String(length=16), nullable=False),
    sa.Column('location', sa.String(length=128), nullable=False),
    sa.Column('prior_location', sa.String(length=128), nullable=False),
    sa.Column('status', sa.Enum('PREADMITTED', 'ADMITTED', 'DISCHARGED', 'CANCELLED', name='visitstatus', native_enum=False, length=24), nullable=False),
    sa.Column('admitted_at', sa.DateTime(), nullable=True),
    sa.Column('discharged_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['patient_fk'], ['patients.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('visit_number', 'patient_fk', name='uq_visit_number')
    )
    with op.batch_alter_table('visits', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_visits_patient_fk'), ['patient_fk'], unique=False)

    op.create_table('outbox_messages',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('destination', sa.String(length=64), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('message_id', sa.String(length=64), nullable=False),
    sa.Column('payload', sa.JSON(), nullable=False),
    sa.Column('rendered', sa.LargeBinary(), nullable=True),
    sa.Column('status', sa.Enum('PENDING', 'SENDING', 'SENT', 'FAILED', 'DEAD', name='outboxstatus', native_enum=False, length=24), nullable=False),
    sa.Column('attempts', sa.Integer(), nullable=False),
    sa.Column('next_attempt_at', sa.DateTime(), nullable=False),
    sa.Column('last_error', sa.Text(), nullable=False),
    sa.Column('reply', sa.LargeBinary(), nullable=True),
    sa.Column('claimed_by', sa.String(length=128), nullable=False),
    sa.Column('claimed_until', sa.DateTime(), nullable=True),
    sa.Column('order_fk', sa.Integer(), nullable=True),
    sa.Column('cause_kind', sa.String(length=32), nullable=False),
    sa.Column('cause_reference', sa.String(length=255), nullable=False),
    sa.Column('cause_message_fk', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('sent_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['cause_message_fk'], ['inbound_messages.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['order_fk'], ['orders.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('outbox_messages', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_outbox_messages_message_id'), ['message_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_outbox_messages_order_fk'), ['order_fk'], unique=False)
        batch_op.create_index('ix_outbox_queue', ['destination', 'status', 'id'], unique=False)
        batch_op.create_index('ix_outbox_status_due', ['status', 'next_attempt_at'], unique=False)

    op.create_table('requested_procedures',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order_fk', sa.Integer(), nullable=False),
    sa.Column('requested_procedure_id', sa.String(length=64), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('code_value', sa.String(length=64), nullable=False),
    sa.Column('code_scheme', sa.String(length=64), nullable=False),
    sa.Column('code_meaning', sa.String(length=128), nullable=False),
    sa.Column('description', sa.String(length=128), nullable=False),
    sa.Column('priority', sa.String(length=16), nullable=False),
    sa.Column('state', sa.Enum('ORDERED', 'SCHEDULED', 'ARRIVED', 'IN_PROGRESS', 'COMPLETED', 'PRELIMINARY', 'FINAL', 'CANCELLED', 'DISCONTINUED', name='procedurestate', native_enum=False, length=24), nullable=False),
    sa.Column('fhir_elements', sa.JSON(), nullable=True),
    sa.Column('body_part', sa.String(length=16), server_default='', nullable=False),
    sa.ForeignKeyConstraint(['order_fk'], ['orders.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('requested_procedures', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_requested_procedures_order_fk'), ['order_fk'], unique=False)
        batch_op.create_index(batch_op.f('ix_requested_procedures_requested_procedure_id'), ['requested_procedure_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_requested_procedures_state'), ['state'], unique=False)
        batch_op.create_index(batch_op.f('ix_requested_procedures_study_instance_uid'), ['study_instance_uid'], unique=False)

    op.create_table('studies',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('issuer', sa.String(length=64), nullable=False),
    sa.Column('patient_name', sa.String(length=324), nullable=False),
    sa.Column('patient_birth_date', sa.String(length=8), nullable=False),
    sa.Column('patient_sex', sa.String(length=16), nullable=False),
    sa.Column('accession_number', sa.String(length=16), nullable=False),
    sa.Column('study_id', sa.String(length=16), nullable=False),
    sa.Column('referring_physician', sa.String(length=324), nullable=False),
    sa.Column('study_date', sa.String(length=8), nullable=False),
    sa.Column('study_time', sa.String(length=16), nullable=False),
    sa.Column('description', sa.String(length=64), nullable=False),
    sa.Column('requested_procedure_id', sa.String(length=64), nullable=False),
    sa.Column('sps_id', sa.String(length=64), nullable=False),
    sa.Column('order_fk', sa.Integer(), nullable=True),
    sa.Column('link_status', sa.Enum('LINKED', 'UNMATCHED', 'AMBIGUOUS', name='linkstatus', native_enum=False, length=24), nullable=False),
    sa.Column('link_reason', sa.String(length=255), nullable=False),
    sa.Column('link_manual', sa.Boolean(), nullable=False),
    sa.Column('received', sa.JSON(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['order_fk'], ['orders.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('study_instance_uid')
    )
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.create_index('ix_studies_accession', ['accession_number'], unique=False)
        batch_op.create_index('ix_studies_date', ['study_date', 'study_time'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_order_fk'), ['order_fk'], unique=False)
        batch_op.create_index('ix_studies_patient', ['patient_id', 'issuer'], unique=False)
        batch_op.create_index(batch_op.f('ix_studies_sps_id'), ['sps_id'], unique=False)

    op.create_table('procedure_steps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('procedure_fk', sa.Integer(), nullable=False),
    sa.Column('sps_id', sa.String(length=64), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('station_name', sa.String(length=16), nullable=False),
    sa.Column('scheduled_start', sa.DateTime(), nullable=False),
    sa.Column('description', sa.String(length=64), nullable=False),
    sa.Column('performing_physician', sa.String(length=324), nullable=False),
    sa.Column('status', sa.Enum('SCHEDULED', 'HELD', 'ARRIVED', 'READY', 'STARTED', 'IN_PROGRESS', 'COMPLETED', 'DISCONTINUED', 'CANCELLED', 'UNSCHEDULED', name='stepstatus', native_enum=False, length=24), nullable=False),
    sa.Column('expected_duration_minutes', sa.Float(), nullable=True),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['procedure_fk'], ['requested_procedures.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('procedure_steps', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_procedure_steps_procedure_fk'), ['procedure_fk'], unique=False)
        batch_op.create_index(batch_op.f('ix_procedure_steps_scheduled_start'), ['scheduled_start'], unique=False)
        batch_op.create_index(batch_op.f('ix_procedure_steps_sps_id'), ['sps_id'], unique=False)
        batch_op.create_index('ix_steps_modality_start', ['modality', 'scheduled_start'], unique=False)
        batch_op.create_index('ix_steps_status_start', ['status', 'scheduled_start'], unique=False)

    op.create_table('procedure_transitions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('procedure_fk', sa.Integer(), nullable=False),
    sa.Column('from_state', sa.Enum('ORDERED', 'SCHEDULED', 'ARRIVED', 'IN_PROGRESS', 'COMPLETED', 'PRELIMINARY', 'FINAL', 'CANCELLED', 'DISCONTINUED', name='procedurestate', native_enum=False, length=24), nullable=True),
    sa.Column('to_state', sa.Enum('ORDERED', 'SCHEDULED', 'ARRIVED', 'IN_PROGRESS', 'COMPLETED', 'PRELIMINARY', 'FINAL', 'CANCELLED', 'DISCONTINUED', name='procedurestate', native_enum=False, length=24), nullable=False),
    sa.Column('at', sa.DateTime(), nullable=False),
    sa.Column('cause_kind', sa.String(length=32), nullable=False),
    sa.Column('cause_reference', sa.String(length=255), nullable=False),
    sa.Column('cause_sender', sa.String(length=255), nullable=False),
    sa.Column('cause_message_fk', sa.Integer(), nullable=True),
    sa.Column('note', sa.String(length=255), nullable=False),
    sa.ForeignKeyConstraint(['cause_message_fk'], ['inbound_messages.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['procedure_fk'], ['requested_procedures.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('procedure_transitions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_procedure_transitions_procedure_fk'), ['procedure_fk'], unique=False)
        batch_op.create_index('ix_transitions_at', ['at'], unique=False)
        batch_op.create_index('ix_transitions_to_at', ['to_state', 'at'], unique=False)

    op.create_table('reports',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order_fk', sa.Integer(), nullable=True),
    sa.Column('accession_number', sa.String(length=16), nullable=False),
    sa.Column('placer_order_number', sa.String(length=64), nullable=False),
    sa.Column('filler_order_number', sa.String(length=64), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('observed_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('state', sa.Enum('DRAFT', 'PRELIMINARY', 'FINAL', 'AMENDED', name='reportstate', native_enum=False, length=24), nullable=True),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('procedure_fk', sa.Integer(), nullable=True),
    sa.Column('parent_fk', sa.Integer(), nullable=True),
    sa.Column('author', sa.String(length=64), nullable=False),
    sa.Column('signed_by', sa.String(length=64), nullable=False),
    sa.Column('signed_at', sa.DateTime(), nullable=True),
    sa.Column('updated_at', sa.DateTime(), nullable=True),
    sa.ForeignKeyConstraint(['order_fk'], ['orders.id'], ),
    sa.ForeignKeyConstraint(['parent_fk'], ['reports.id'], ),
    sa.ForeignKeyConstraint(['procedure_fk'], ['requested_procedures.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reports_accession_number'), ['accession_number'], unique=False)
        batch_op.create_index(batch_op.f('ix_reports_order_fk'), ['order_fk'], unique=False)
        batch_op.create_index(batch_op.f('ix_reports_parent_fk'), ['parent_fk'], unique=False)
        batch_op.create_index(batch_op.f('ix_reports_procedure_fk'), ['procedure_fk'], unique=False)

    op.create_table('series',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('study_fk', sa.Integer(), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('series_number', sa.String(length=12), nullable=False),
    sa.Column('description', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['study_fk'], ['studies.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('series_instance_uid')
    )
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_series_study_fk'), ['study_fk'], unique=False)

    op.create_table('appointments',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('order_fk', sa.Integer(), nullable=True),
    sa.Column('patient_fk', sa.Integer(), nullable=True),
    sa.Column('placer_appointment_id', sa.String(length=64), nullable=False),
    sa.Column('filler_appointment_id', sa.String(length=64), nullable=False),
    sa.Column('placer_order_number', sa.String(length=64), nullable=False),
    sa.Column('start', sa.DateTime(), nullable=True),
    sa.Column('duration_minutes', sa.Float(), nullable=True),
    sa.Column('resource', sa.String(length=128), nullable=False),
    sa.Column('location', sa.String(length=128), nullable=False),
    sa.Column('status', sa.Enum('PROPOSED', 'BOOKED', 'CANCELLED', 'NOSHOW', name='appointmentstatus', native_enum=False, length=24), nullable=False),
    sa.Column('resource_fk', sa.Integer(), nullable=True),
    sa.Column('step_fk', sa.Integer(), nullable=True),
    sa.Column('end', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['order_fk'], ['orders.id'], ),
    sa.ForeignKeyConstraint(['patient_fk'], ['patients.id'], ),
    sa.ForeignKeyConstraint(['resource_fk'], ['resources.id'], ),
    sa.ForeignKeyConstraint(['step_fk'], ['procedure_steps.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('appointments', schema=None) as batch_op:
        batch_op.create_index('ix_appointments_ids', ['filler_appointment_id', 'placer_appointment_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_appointments_order_fk'), ['order_fk'], unique=False)
        batch_op.create_index(batch_op.f('ix_appointments_patient_fk'), ['patient_fk'], unique=False)
        batch_op.create_index('ix_appointments_resource', ['resource_fk', 'start'], unique=False)
        batch_op.create_index(batch_op.f('ix_appointments_step_fk'), ['step_fk'], unique=False)

    op.create_table('instances',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('series_fk', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('sop_class_uid', sa.String(length=64), nullable=False),
    sa.Column('transfer_syntax_uid', sa.String(length=64), nullable=False),
    sa.Column('instance_number', sa.String(length=12), nullable=False),
    sa.Column('path', sa.String(length=512), nullable=False),
    sa.Column('size', sa.BigInteger(), nullable=False),
    sa.Column('calling_aet', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['series_fk'], ['series.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sop_instance_uid')
    )
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_instances_series_fk'), ['series_fk'], unique=False)

    op.create_table('performed_steps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('sop_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('step_fk', sa.Integer(), nullable=True),
    sa.Column('status', sa.Enum('IN PROGRESS', 'COMPLETED', 'DISCONTINUED', name='performedstatus', native_enum=False, length=24), nullable=False),
    sa.Column('station_aet', sa.String(length=16), nullable=False),
    sa.Column('modality', sa.String(length=16), nullable=False),
    sa.Column('study_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('accession_number', sa.String(length=16), nullable=False),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('ended_at', sa.DateTime(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('updated_at', sa.DateTime(), nullable=False),
    sa.Column('patient_id', sa.String(length=64), nullable=False),
    sa.Column('patient_name', sa.String(length=324), nullable=False),
    sa.Column('sps_id', sa.String(length=64), nullable=False),
    sa.Column('description', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['step_fk'], ['procedure_steps.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('sop_instance_uid')
    )
    with op.batch_alter_table('performed_steps', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_performed_steps_step_fk'), ['step_fk'], unique=False)

    op.create_table('step_protocol_codes',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('step_fk', sa.Integer(), nullable=False),
    sa.Column('code_value', sa.String(length=64), nullable=False),
    sa.Column('code_scheme', sa.String(length=64), nullable=False),
    sa.Column('code_meaning', sa.String(length=128), nullable=False),
    sa.ForeignKeyConstraint(['step_fk'], ['procedure_steps.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('step_protocol_codes', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_step_protocol_codes_code_value'), ['code_value'], unique=False)
        batch_op.create_index(batch_op.f('ix_step_protocol_codes_step_fk'), ['step_fk'], unique=False)

    op.create_table('step_stations',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('step_fk', sa.Integer(), nullable=False),
    sa.Column('ae_title', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['step_fk'], ['procedure_steps.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('step_stations', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_step_stations_ae_title'), ['ae_title'], unique=False)
        batch_op.create_index(batch_op.f('ix_step_stations_step_fk'), ['step_fk'], unique=False)

    op.create_table('performed_series',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('performed_fk', sa.Integer(), nullable=False),
    sa.Column('series_instance_uid', sa.String(length=64), nullable=False),
    sa.Column('description', sa.String(length=64), nullable=False),
    sa.Column('protocol_name', sa.String(length=64), nullable=False),
    sa.Column('retrieve_aet', sa.String(length=16), nullable=False),
    sa.Column('operator', sa.String(length=324), nullable=False),
    sa.Column('instances', sa.JSON(), nullable=False),
    sa.ForeignKeyConstraint(['performed_fk'], ['performed_steps.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('performed_series', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_performed_series_performed_fk'), ['performed_fk'], unique=False)
        batch_op.create_index(batch_op.f('ix_performed_series_series_instance_uid'), ['series_instance_uid'], unique=False)



def downgrade() -> None:
    with op.batch_alter_table('performed_series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_performed_series_series_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_performed_series_performed_fk'))

    op.drop_table('performed_series')
    with op.batch_alter_table('step_stations', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_step_stations_step_fk'))
        batch_op.drop_index(batch_op.f('ix_step_stations_ae_title'))

    op.drop_table('step_stations')
    with op.batch_alter_table('step_protocol_codes', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_step_protocol_codes_step_fk'))
        batch_op.drop_index(batch_op.f('ix_step_protocol_codes_code_value'))

    op.drop_table('step_protocol_codes')
    with op.batch_alter_table('performed_steps', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_performed_steps_step_fk'))

    op.drop_table('performed_steps')
    with op.batch_alter_table('instances', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_instances_series_fk'))

    op.drop_table('instances')
    with op.batch_alter_table('appointments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_appointments_step_fk'))
        batch_op.drop_index('ix_appointments_resource')
        batch_op.drop_index(batch_op.f('ix_appointments_patient_fk'))
        batch_op.drop_index(batch_op.f('ix_appointments_order_fk'))
        batch_op.drop_index('ix_appointments_ids')

    op.drop_table('appointments')
    with op.batch_alter_table('series', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_series_study_fk'))

    op.drop_table('series')
    with op.batch_alter_table('reports', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_reports_procedure_fk'))
        batch_op.drop_index(batch_op.f('ix_reports_parent_fk'))
        batch_op.drop_index(batch_op.f('ix_reports_order_fk'))
        batch_op.drop_index(batch_op.f('ix_reports_accession_number'))

    op.drop_table('reports')
    with op.batch_alter_table('procedure_transitions', schema=None) as batch_op:
        batch_op.drop_index('ix_transitions_to_at')
        batch_op.drop_index('ix_transitions_at')
        batch_op.drop_index(batch_op.f('ix_procedure_transitions_procedure_fk'))

    op.drop_table('procedure_transitions')
    with op.batch_alter_table('procedure_steps', schema=None) as batch_op:
        batch_op.drop_index('ix_steps_status_start')
        batch_op.drop_index('ix_steps_modality_start')
        batch_op.drop_index(batch_op.f('ix_procedure_steps_sps_id'))
        batch_op.drop_index(batch_op.f('ix_procedure_steps_scheduled_start'))
        batch_op.drop_index(batch_op.f('ix_procedure_steps_procedure_fk'))

    op.drop_table('procedure_steps')
    with op.batch_alter_table('studies', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_studies_sps_id'))
        batch_op.drop_index('ix_studies_patient')
        batch_op.drop_index(batch_op.f('ix_studies_order_fk'))
        batch_op.drop_index('ix_studies_date')
        batch_op.drop_index('ix_studies_accession')

    op.drop_table('studies')
    with op.batch_alter_table('requested_procedures', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_requested_procedures_study_instance_uid'))
        batch_op.drop_index(batch_op.f('ix_requested_procedures_state'))
        batch_op.drop_index(batch_op.f('ix_requested_procedures_requested_procedure_id'))
        batch_op.drop_index(batch_op.f('ix_requested_procedures_order_fk'))

    op.drop_table('requested_procedures')
    with op.batch_alter_table('outbox_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_outbox_status_due')
        batch_op.drop_index('ix_outbox_queue')
        batch_op.drop_index(batch_op.f('ix_outbox_messages_order_fk'))
        batch_op.drop_index(batch_op.f('ix_outbox_messages_message_id'))

    op.drop_table('outbox_messages')
    with op.batch_alter_table('visits', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_visits_patient_fk'))

    op.drop_table('visits')
    with op.batch_alter_table('orders', schema=None) as batch_op:
        batch_op.drop_index('ix_orders_placer')
        batch_op.drop_index(batch_op.f('ix_orders_patient_fk'))
        batch_op.drop_index('ix_orders_filler')
        batch_op.drop_index('ix_orders_accession')

    op.drop_table('orders')
    op.drop_table('users')
    with op.batch_alter_table('subscriptions', schema=None) as batch_op:
        batch_op.drop_index('ix_subscriptions_topic')

    op.drop_table('subscriptions')
    op.drop_table('resources')
    op.drop_table('resource_versions')
    with op.batch_alter_table('patients', schema=None) as batch_op:
        batch_op.drop_index('ix_patients_name', postgresql_ops={'name': 'text_pattern_ops'})
        batch_op.drop_index(batch_op.f('ix_patients_merged_into_fk'))

    op.drop_table('patients')
    with op.batch_alter_table('inbound_messages', schema=None) as batch_op:
        batch_op.drop_index('ix_inbound_status')
        batch_op.drop_index(batch_op.f('ix_inbound_messages_patient_key'))
        batch_op.drop_index(batch_op.f('ix_inbound_messages_batch_fk'))
        batch_op.drop_index(batch_op.f('ix_inbound_messages_accession_number'))
        batch_op.drop_index('ix_inbound_dedup')

    op.drop_table('inbound_messages')
    op.drop_table('daily_statistics')
    with op.batch_alter_table('audit_events', schema=None) as batch_op:
        batch_op.drop_index('ix_audit_user')
        batch_op.drop_index('ix_audit_patient')
        batch_op.drop_index('ix_audit_at')

    op.drop_table('audit_events')
    op.drop_table('api_tokens')
