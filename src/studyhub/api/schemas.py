"""Request and response bodies. Length limits are the database's own (db.models.MAX_*)."""

from __future__ import annotations

import uuid
import zoneinfo
from datetime import date, datetime, timezone
from typing import Annotated, Generic, Literal, TypeVar

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, field_validator

from studyhub.db.models import MAX_AI_TEXT, MAX_CARD_SIDE, MAX_NOTE_BODY, MAX_TITLE

Title = Annotated[str, Field(min_length=1, max_length=MAX_TITLE)]
NoteBody = Annotated[str, Field(max_length=MAX_NOTE_BODY)]
CardSide = Annotated[str, Field(min_length=1, max_length=MAX_CARD_SIDE)]
AiText = Annotated[str, Field(max_length=MAX_AI_TEXT)]
Limit = Annotated[int, Field(ge=1, le=100)]


def _email_form(v: str) -> str:
    """The database's own rule (ck_users_email_form): lower case, something before and after
    one '@', no spaces. Whether the address receives mail is not checked here."""
    local, at, domain = v.partition("@")
    if not (local and at and domain) or "@" in domain or any(c.isspace() for c in v):
        raise ValueError("not an email address")
    return v.lower()


Email = Annotated[str, Field(min_length=3, max_length=320), AfterValidator(_email_form)]

STATE_NAMES = {1: "learning", 2: "review", 3: "relearning"}
StateName = Literal["learning", "review", "relearning"]

T = TypeVar("T")


class Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class In(BaseModel):
    """A request body. No string in it may hold NUL (U+0000): PostgreSQL text cannot store it
    (the insert would fail), and no field has a use for it, so it is refused with the field's
    name before anything reaches the database."""

    @field_validator("*", mode="after")
    @classmethod
    def no_nul(cls, v: object) -> object:
        if isinstance(v, str) and "\x00" in v:
            raise ValueError("must not contain NUL (\\u0000) characters")
        return v


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        None, description="Pass as ?cursor= for the next page; null on the last page."
    )


# ------------------------------------------------------------------- accounts
class RegisterIn(In):
    email: Email
    password: str = Field(min_length=8, max_length=128)
    full_name: str = Field(min_length=1, max_length=200)
    year_group: int | None = Field(None, ge=1, le=13)
    school: str | None = Field(None, max_length=200)
    timezone: str = Field("UTC", max_length=64)

    @field_validator("timezone")
    @classmethod
    def known_timezone(cls, v: str) -> str:
        try:
            zoneinfo.ZoneInfo(v)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError("unknown time zone (use an IANA name such as Europe/London)") from None
        return v


class RegistrationAccepted(BaseModel):
    """The answer to every valid registration, new address or not (it must not tell which)."""

    status: Literal["accepted"] = "accepted"
    detail: str = Field(
        "registration received; sign in with POST /auth/token using this email and password",
        description="The same text for every registration.")
    sign_in: Literal["/auth/token"] = Field(
        "/auth/token", description="Where to get a bearer token next (POST email and password). "
        "A 401 there means the password does not match the account of that address: the "
        "address was registered before, by its owner.")


class LoginIn(In):
    email: Email
    password: str = Field(min_length=1, max_length=128)


class TokenOut(BaseModel):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int
    user_id: uuid.UUID
    student_id: uuid.UUID


class MeOut(Out):
    user_id: uuid.UUID
    student_id: uuid.UUID
    email: str
    full_name: str
    year_group: int | None
    school: str | None
    timezone: str
    date_of_birth: date | None
    created_at: datetime


# --------------------------------------------------------------- subjects
class SubjectOut(Out):
    id: uuid.UUID
    code: str
    name: str


class EnrolIn(In):
    target_grade: str | None = Field(None, max_length=10)


class EnrolmentOut(Out):
    subject_id: uuid.UUID
    code: str
    name: str
    enrolled_at: datetime
    target_grade: str | None


# ------------------------------------------------------------------- notes
class NoteIn(In):
    subject_id: uuid.UUID
    title: Title
    body: NoteBody = ""


class NotePatch(In):
    subject_id: uuid.UUID | None = None
    title: Title | None = None
    body: NoteBody | None = None


class NoteSummary(Out):
    id: uuid.UUID
    subject_id: uuid.UUID
    title: str
    preview: str = Field(description="The first 200 characters of the body.")
    created_at: datetime
    updated_at: datetime


class NoteOut(Out):
    id: uuid.UUID
    subject_id: uuid.UUID
    title: str
    body: str
    created_at: datetime
    updated_at: datetime


# --------------------------------------------------------------- flashcards
class FlashcardIn(In):
    subject_id: uuid.UUID
    note_id: uuid.UUID | None = None
    front: CardSide
    back: CardSide


class FlashcardPatch(In):
    subject_id: uuid.UUID | None = None
    note_id: uuid.UUID | None = None
    front: CardSide | None = None
    back: CardSide | None = None


class FlashcardOut(Out):
    id: uuid.UUID
    subject_id: uuid.UUID
    note_id: uuid.UUID | None
    front: str
    back: str
    state: StateName
    step: int | None
    stability: float | None
    difficulty: float | None
    due: datetime
    last_review: datetime | None
    reps: int
    lapses: int
    created_at: datetime
    updated_at: datetime

    @field_validator("state", mode="before")
    @classmethod
    def state_name(cls, v: object) -> object:
        return STATE_NAMES.get(v, v) if isinstance(v, int) else v


class ReviewIn(In):
    rating: int = Field(ge=1, le=4, description="1 again, 2 hard, 3 good, 4 easy")
    reviewed_at: AwareDatetime | None = Field(
        None, description="When the card was reviewed (default: now); not in the future."
    )
    revision_session_id: uuid.UUID | None = None
    review_duration_ms: int | None = Field(None, ge=0, le=86_400_000)

    @field_validator("reviewed_at")
    @classmethod
    def to_utc(cls, v: datetime | None) -> datetime | None:
        try:
            return v.astimezone(timezone.utc) if v is not None else None
        except OverflowError:  # e.g. 0001-01-01T00:00:00+01:00 is in year 0 in UTC
            raise ValueError("out of range") from None


class ReviewOut(Out):
    id: uuid.UUID
    flashcard_id: uuid.UUID
    revision_session_id: uuid.UUID | None
    rating: int
    reviewed_at: datetime
    state: StateName
    stability: float
    difficulty: float
    elapsed_days: float
    scheduled_days: float
    due: datetime
    review_duration_ms: int | None

    @field_validator("state", mode="before")
    @classmethod
    def state_name(cls, v: object) -> object:
        return STATE_NAMES.get(v, v) if isinstance(v, int) else v


class ReviewSyncOut(ReviewOut):
    recorded_at: datetime


class ReviewSyncPage(BaseModel):
    items: list[ReviewSyncOut]
    next_cursor: str | None = Field(
        None, description="Pass as ?cursor= next time (null only while there is nothing yet).")
    more: bool = Field(description="More reviews are ready now: ask again at once.")


class ReviewResult(BaseModel):
    review: ReviewOut
    card: FlashcardOut


# --------------------------------------------------------- revision sessions
class SessionIn(In):
    subject_id: uuid.UUID | None = None


class SessionOut(Out):
    id: uuid.UUID
    subject_id: uuid.UUID | None
    started_at: datetime
    ended_at: datetime | None
    cards_reviewed: int


# ---------------------------------------------------------- AI interactions
class AIInteractionIn(In):
    subject_id: uuid.UUID | None = None
    note_id: uuid.UUID | None = None
    model: str = Field(min_length=1, max_length=100)
    prompt: AiText
    response: AiText
    prompt_tokens: int = Field(ge=0, le=10_000_000)
    completion_tokens: int = Field(ge=0, le=10_000_000)
    latency_ms: int = Field(ge=0, le=3_600_000)


class AIInteractionOut(Out):
    id: uuid.UUID
    subject_id: uuid.UUID | None
    note_id: uuid.UUID | None
    model: str
    prompt: str
    response: str
    prompt_tokens: int
    completion_tokens: int
    latency_ms: int
    created_at: datetime
