"""initial schema

Revision ID: 0001
Revises: 
Create Date: 2026-11-25
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op


revision: str = '0001'
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# studyhub migrate lint: findings accepted in this migration, with the reason (docs/migrations.md).
LINT_ACK = {
    "prefer-bigint-over-smallint": "bounded codes only: rating 1-4, FSRS state 1-3, step, "
    "year_group 1-13; CHECK constraints keep them far from 32767",
    "prefer-bigint-over-int": "per-row counters and durations (reps, lapses, tokens, "
    "latency_ms, review_duration_ms, cards_reviewed), not keys or sequences; they stay far "
    "below 2^31",
}
LINT_ACK_DOWNGRADE = {
    "drop-table": "undoing the initial schema removes the whole app: only for a throwaway or "
    "development database (`migrate down --to base` asks for confirmation and refuses "
    "production unless it is named)",
}


def upgrade() -> None:
    op.create_table('subjects',
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('code', sa.Text(), nullable=False),
    sa.Column('name', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_subjects')),
    sa.UniqueConstraint('code', name=op.f('uq_subjects_code')),
    sa.UniqueConstraint('name', name=op.f('uq_subjects_name'))
    )
    op.create_table('users',
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('email', sa.Text(), nullable=False),
    sa.Column('password_hash', sa.Text(), nullable=False),
    sa.Column('is_active', sa.Boolean(), server_default=sa.text('true'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('last_login_at', sa.DateTime(timezone=True), nullable=True),
    sa.CheckConstraint("email = lower(email) AND position('@' IN email) > 1", name=op.f('ck_users_email_form')),
    sa.CheckConstraint('char_length(email) <= 320', name=op.f('ck_users_email_length')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_users')),
    sa.UniqueConstraint('email', name=op.f('uq_users_email'))
    )
    op.create_table('students',
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('user_id', sa.Uuid(), nullable=False),
    sa.Column('full_name', sa.Text(), nullable=False),
    sa.Column('date_of_birth', sa.Date(), nullable=True),
    sa.Column('school', sa.Text(), nullable=True),
    sa.Column('year_group', sa.SmallInteger(), nullable=True),
    sa.Column('timezone', sa.Text(), server_default=sa.text("'UTC'"), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('char_length(full_name) BETWEEN 1 AND 200', name=op.f('ck_students_full_name_length')),
    sa.CheckConstraint('year_group BETWEEN 1 AND 13', name=op.f('ck_students_year_group_range')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_students_user_id_users'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_students')),
    sa.UniqueConstraint('user_id', name=op.f('uq_students_user_id'))
    )
    op.create_table('notes',
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('student_id', sa.Uuid(), nullable=False),
    sa.Column('subject_id', sa.Uuid(), nullable=False),
    sa.Column('title', sa.Text(), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('char_length(body) <= 100000', name=op.f('ck_notes_body_length')),
    sa.CheckConstraint('char_length(title) BETWEEN 1 AND 300', name=op.f('ck_notes_title_length')),
    sa.ForeignKeyConstraint(['student_id'], ['students.id'], name=op.f('fk_notes_student_id_students'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['subject_id'], ['subjects.id'], name=op.f('fk_notes_subject_id_subjects'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_notes'))
    )
    op.create_index(op.f('ix_notes_student_id'), 'notes', ['student_id'], unique=False)
    op.create_index(op.f('ix_notes_subject_id'), 'notes', ['subject_id'], unique=False)
    op.create_table('revision_sessions',
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('student_id', sa.Uuid(), nullable=False),
    sa.Column('subject_id', sa.Uuid(), nullable=True),
    sa.Column('started_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cards_reviewed', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.CheckConstraint('cards_reviewed >= 0', name=op.f('ck_revision_sessions_cards_reviewed_positive')),
    sa.CheckConstraint('ended_at IS NULL OR ended_at >= started_at', name=op.f('ck_revision_sessions_ends_after_start')),
    sa.ForeignKeyConstraint(['student_id'], ['students.id'], name=op.f('fk_revision_sessions_student_id_students'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['subject_id'], ['subjects.id'], name=op.f('fk_revision_sessions_subject_id_subjects'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_revision_sessions'))
    )
    op.create_index(op.f('ix_revision_sessions_student_id'), 'revision_sessions', ['student_id'], unique=False)
    op.create_index(op.f('ix_revision_sessions_subject_id'), 'revision_sessions', ['subject_id'], unique=False)
    op.create_table('student_subjects',
    sa.Column('student_id', sa.Uuid(), nullable=False),
    sa.Column('subject_id', sa.Uuid(), nullable=False),
    sa.Column('enrolled_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('target_grade', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['student_id'], ['students.id'], name=op.f('fk_student_subjects_student_id_students'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['subject_id'], ['subjects.id'], name=op.f('fk_student_subjects_subject_id_subjects'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('student_id', 'subject_id', name=op.f('pk_student_subjects'))
    )
    op.create_index(op.f('ix_student_subjects_subject_id'), 'student_subjects', ['subject_id'], unique=False)
    op.create_table('ai_interactions',
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('student_id', sa.Uuid(), nullable=False),
    sa.Column('subject_id', sa.Uuid(), nullable=True),
    sa.Column('note_id', sa.Uuid(), nullable=True),
    sa.Column('model', sa.Text(), nullable=False),
    sa.Column('prompt', sa.Text(), nullable=False),
    sa.Column('response', sa.Text(), nullable=False),
    sa.Column('prompt_tokens', sa.Integer(), nullable=False),
    sa.Column('completion_tokens', sa.Integer(), nullable=False),
    sa.Column('latency_ms', sa.Integer(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('char_length(prompt) <= 50000 AND char_length(response) <= 50000', name=op.f('ck_ai_interactions_text_length')),
    sa.CheckConstraint('prompt_tokens >= 0 AND completion_tokens >= 0 AND latency_ms >= 0', name=op.f('ck_ai_interactions_counters_positive')),
    sa.ForeignKeyConstraint(['note_id'], ['notes.id'], name=op.f('fk_ai_interactions_note_id_notes'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['student_id'], ['students.id'], name=op.f('fk_ai_interactions_student_id_students'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['subject_id'], ['subjects.id'], name=op.f('fk_ai_interactions_subject_id_subjects'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_ai_interactions'))
    )
    op.create_index(op.f('ix_ai_interactions_note_id'), 'ai_interactions', ['note_id'], unique=False)
    op.create_index(op.f('ix_ai_interactions_student_id'), 'ai_interactions', ['student_id'], unique=False)
    op.create_index(op.f('ix_ai_interactions_subject_id'), 'ai_interactions', ['subject_id'], unique=False)
    op.create_table('flashcards',
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('student_id', sa.Uuid(), nullable=False),
    sa.Column('subject_id', sa.Uuid(), nullable=False),
    sa.Column('note_id', sa.Uuid(), nullable=True),
    sa.Column('front', sa.Text(), nullable=False),
    sa.Column('back', sa.Text(), nullable=False),
    sa.Column('state', sa.SmallInteger(), server_default=sa.text('1'), nullable=False),
    sa.Column('step', sa.SmallInteger(), server_default=sa.text('0'), nullable=True),
    sa.Column('stability', sa.Double(), nullable=True),
    sa.Column('difficulty', sa.Double(), nullable=True),
    sa.Column('due', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('last_review', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reps', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('lapses', sa.Integer(), server_default=sa.text('0'), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), server_default=sa.text('now()'), nullable=False),
    sa.CheckConstraint('char_length(front) BETWEEN 1 AND 4000 AND char_length(back) BETWEEN 1 AND 4000', name=op.f('ck_flashcards_sides_length')),
    sa.CheckConstraint('difficulty IS NULL OR difficulty BETWEEN 1 AND 10', name=op.f('ck_flashcards_difficulty_range')),
    sa.CheckConstraint('reps >= 0 AND lapses >= 0 AND lapses <= reps', name=op.f('ck_flashcards_counters')),
    sa.CheckConstraint('stability IS NULL OR stability > 0', name=op.f('ck_flashcards_stability_positive')),
    sa.CheckConstraint('state IN (1, 2, 3)', name=op.f('ck_flashcards_state_valid')),
    sa.ForeignKeyConstraint(['note_id'], ['notes.id'], name=op.f('fk_flashcards_note_id_notes'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['student_id'], ['students.id'], name=op.f('fk_flashcards_student_id_students'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['subject_id'], ['subjects.id'], name=op.f('fk_flashcards_subject_id_subjects'), ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_flashcards')),
    sa.UniqueConstraint('student_id', 'id', name=op.f('uq_flashcards_student_id_id'))
    )
    op.create_index(op.f('ix_flashcards_note_id'), 'flashcards', ['note_id'], unique=False)
    op.create_index(op.f('ix_flashcards_student_id_due'), 'flashcards', ['student_id', 'due'], unique=False)
    op.create_index(op.f('ix_flashcards_subject_id'), 'flashcards', ['subject_id'], unique=False)
    op.create_table('flashcard_reviews',
    sa.Column('id', sa.Uuid(), server_default=sa.text('gen_random_uuid()'), nullable=False),
    sa.Column('student_id', sa.Uuid(), nullable=False),
    sa.Column('flashcard_id', sa.Uuid(), nullable=False),
    sa.Column('revision_session_id', sa.Uuid(), nullable=True),
    sa.Column('rating', sa.SmallInteger(), nullable=False),
    sa.Column('reviewed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('state', sa.SmallInteger(), nullable=False),
    sa.Column('stability', sa.Double(), nullable=False),
    sa.Column('difficulty', sa.Double(), nullable=False),
    sa.Column('elapsed_days', sa.Double(), nullable=False),
    sa.Column('scheduled_days', sa.Double(), nullable=False),
    sa.Column('due', sa.DateTime(timezone=True), nullable=False),
    sa.Column('review_duration_ms', sa.Integer(), nullable=True),
    sa.CheckConstraint('rating BETWEEN 1 AND 4', name=op.f('ck_flashcard_reviews_rating_range')),
    sa.CheckConstraint('scheduled_days >= 0 AND elapsed_days >= 0', name=op.f('ck_flashcard_reviews_days_positive')),
    sa.CheckConstraint('state IN (1, 2, 3)', name=op.f('ck_flashcard_reviews_state_valid')),
    sa.ForeignKeyConstraint(['revision_session_id'], ['revision_sessions.id'], name=op.f('fk_flashcard_reviews_revision_session_id_revision_sessions'), ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['student_id', 'flashcard_id'], ['flashcards.student_id', 'flashcards.id'], name=op.f('fk_flashcard_reviews_student_id_flashcard_id_flashcards'), ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['student_id'], ['students.id'], name=op.f('fk_flashcard_reviews_student_id_students'), ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_flashcard_reviews'))
    )
    op.create_index(op.f('ix_flashcard_reviews_revision_session_id'), 'flashcard_reviews', ['revision_session_id'], unique=False)
    op.create_index(op.f('ix_flashcard_reviews_student_id_flashcard_id_reviewed_at'), 'flashcard_reviews', ['student_id', 'flashcard_id', 'reviewed_at'], unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_flashcard_reviews_student_id_flashcard_id_reviewed_at'), table_name='flashcard_reviews')
    op.drop_index(op.f('ix_flashcard_reviews_revision_session_id'), table_name='flashcard_reviews')
    op.drop_table('flashcard_reviews')
    op.drop_index(op.f('ix_flashcards_subject_id'), table_name='flashcards')
    op.drop_index(op.f('ix_flashcards_student_id_due'), table_name='flashcards')
    op.drop_index(op.f('ix_flashcards_note_id'), table_name='flashcards')
    op.drop_table('flashcards')
    op.drop_index(op.f('ix_ai_interactions_subject_id'), table_name='ai_interactions')
    op.drop_index(op.f('ix_ai_interactions_student_id'), table_name='ai_interactions')
    op.drop_index(op.f('ix_ai_interactions_note_id'), table_name='ai_interactions')
    op.drop_table('ai_interactions')
    op.drop_index(op.f('ix_student_subjects_subject_id'), table_name='student_subjects')
    op.drop_table('student_subjects')
    op.drop_index(op.f('ix_revision_sessions_subject_id'), table_name='revision_sessions')
    op.drop_index(op.f('ix_revision_sessions_student_id'), table_name='revision_sessions')
    op.drop_table('revision_sessions')
    op.drop_index(op.f('ix_notes_subject_id'), table_name='notes')
    op.drop_index(op.f('ix_notes_student_id'), table_name='notes')
    op.drop_table('notes')
    op.drop_table('students')
    op.drop_table('users')
    op.drop_table('subjects')
