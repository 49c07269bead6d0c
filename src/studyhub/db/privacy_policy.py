"""What the privacy tools do with each table that holds or points at personal data.

``studyhub privacy`` derives the tables that refer to a person from the foreign-key graph in the
catalog (``pg_constraint``), starting at the roots below, and checks every one of them against
this policy at run time. A table that references a person (or has a ``student_id``, ``user_id`` or
``email`` column) but is missing here makes export and erasure refuse, naming the table: add it
here in the same change that adds its model.

- ``erase``: the person's rows are exported (unless ``export=False``) and deleted on erasure.
- ``keep``: rows stay on erasure, with a ``reason``. A kept table that references a person must do
  so only through ``ON DELETE SET NULL`` keys, so the link is gone once the person is erased.

Rows "of the person" are those reached through owning foreign keys (ON DELETE CASCADE, RESTRICT
or NO ACTION). A ``SET NULL`` key is a link: the row outlives its parent, the database unlinks it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

#: The person is identified by these rows; the parameter is the key that selects them.
ROOTS: dict[str, str] = {"public.users": "user_id", "public.students": "student_id"}

#: Column names that mean "this table is about a person" even without a foreign key.
PERSON_COLUMNS: tuple[str, ...] = ("student_id", "user_id", "email")


@dataclass(frozen=True)
class TablePolicy:
    action: Literal["erase", "keep"]
    description: str  # what the table holds, written for the person (goes into the export README)
    reason: str = ""  # why a ``keep`` table is kept
    export: bool = True
    exclude_columns: tuple[str, ...] = ()  # never exported
    nest_under: str | None = None  # in the JSON document, nest rows inside this parent's rows
    json_key: str | None = None  # key in the JSON document (roots: one object, not a list)
    label_columns: tuple[str, ...] = ()  # reference tables: shown next to keys pointing at them


POLICY: dict[str, TablePolicy] = {
    "public.users": TablePolicy(
        "erase",
        "Your login account: email address, whether it is active, when it was created, last "
        "updated and last used. The password hash is never exported.",
        exclude_columns=("password_hash",),
        json_key="user",
    ),
    "public.students": TablePolicy(
        "erase",
        "Your learner profile: name, date of birth, school, year group and time zone.",
        json_key="student",
    ),
    "public.student_subjects": TablePolicy(
        "erase", "The subjects you are enrolled in (with their names) and your target grades."
    ),
    "public.notes": TablePolicy("erase", "Your notes: titles and full text."),
    "public.flashcards": TablePolicy(
        "erase",
        "Your flashcards (both sides) with their spaced-repetition state (FSRS: stability, "
        "difficulty, when each is due).",
    ),
    "public.flashcard_reviews": TablePolicy(
        "erase",
        "Every review of your flashcards: when, your rating, and the state it produced. In the "
        "JSON document they are nested inside their flashcard.",
        nest_under="public.flashcards",
    ),
    "public.revision_sessions": TablePolicy(
        "erase", "Your revision sessions: subject, start and end time, cards reviewed."
    ),
    "public.ai_interactions": TablePolicy(
        "erase",
        "Your conversations with the AI tutor: your prompts, its answers, the model, token "
        "counts and response times.",
    ),
    "public.subjects": TablePolicy(
        "keep",
        "Subjects of study.",
        reason="shared reference data (codes and names), about no person; shown by name next "
        "to the rows that point at it",
        export=False,
        label_columns=("code", "name"),
    ),
    "ops.erasure_ledger": TablePolicy(
        "keep",
        "Erased people.",
        reason="ids of erased people, no email or name: needed to erase them again when a "
        "backup taken before the erasure is restored (docs/privacy.md)",
        export=False,
    ),
}
