"""Deterministic demo rows, already encoded for PostgreSQL's binary COPY format.

Everything a student owns is derived from ``random.Random(f"studyhub-seed:{seed}:{index}")``
and a fixed dataset clock (``DATASET_NOW``), so the same seed and student index always produce
the same bytes — UUIDs and timestamps included — whatever else is in the database. Student
numbers continue per seed (``first_index``), and emails carry the seed and number
(``amelia.jones+s42n17@example.org``), so appending with any seed never clashes.

Rows are encoded straight into binary COPY tuples (``struct`` packing, length-prefixed text
pieces prepared once), which is several times cheaper, both here and in the server, than
formatting and parsing text. Nothing here touches a database.

One module on purpose (~520 lines): the generator calls the packers above it inline in its
loops; split apart, a dozen private encoders would become another module's public surface.
"""

from __future__ import annotations

import base64
import random
import struct
import unicodedata
import uuid
from dataclasses import dataclass, field
from datetime import date, datetime, timezone
from itertools import accumulate
from typing import Iterator

from studyhub.ops.seed import words
from studyhub.ops.seed.histories import (
    CADENCES_DAYS,
    US_PER_DAY,
    US_PER_HOUR,
    US_PER_MINUTE,
    US_PER_S,
    HistoryPool,
    history_pool,
)
from studyhub.ops.seed.tables import (
    DATASET_NOW,
    HEAVY_MIN_FLASHCARDS,
    HEAVY_MIN_REVIEWS,
    SCHOOL_YEAR_START,
    SEEDED_TABLES,
    TABLE_COLUMNS,
)

# ----------------------------------------------------------------------------- the clock
_PG_EPOCH = datetime(2000, 1, 1, tzinfo=timezone.utc)  # binary timestamps count from here
_PG_EPOCH_DATE = date(2000, 1, 1)
NOW_US = int((DATASET_NOW - _PG_EPOCH).total_seconds()) * US_PER_S
SUBJECTS_CREATED_US = NOW_US - 3 * 365 * US_PER_DAY

# ------------------------------------------------------------------ binary encoding
COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + struct.pack("!ii", 0, 0)
COPY_TRAILER = struct.pack("!h", -1)
NULL = struct.pack("!i", -1)
_FIELDS = {t: struct.pack("!h", len(c)) for t, c in TABLE_COLUMNS.items()}
_UUID_LEN = struct.pack("!i", 16)
_TRUE = struct.pack("!ib", 1, 1)
_FALSE = struct.pack("!ib", 1, 0)
_LEN = struct.Struct("!i").pack
_TS = struct.Struct("!iq").pack
_TS2 = struct.Struct("!iqiq").pack
_TS3 = struct.Struct("!iqiqiq").pack
_TS4 = struct.Struct("!iqiqiqiq").pack
_INT2 = struct.Struct("!ih").pack
_INT4 = struct.Struct("!ii").pack
_INT4x3 = struct.Struct("!iiiiii").pack
_FLOAT8 = struct.Struct("!id").pack
_REVIEW_TAIL = struct.Struct("!ihihidididid").pack
_SESSION_TAIL = struct.Struct("!iqiqii").pack

# UUID version 4 / RFC 4122 variant bits, applied to random bytes with bytes.translate.
_V4 = bytes((b & 0x0F) | 0x40 for b in range(256))
_VARIANT = bytes((b & 0x3F) | 0x80 for b in range(256))


def text_field(value: str) -> bytes:
    data = value.encode()
    return _LEN(len(data)) + data


def new_ids(rng: random.Random, n: int) -> list[bytes]:
    """``n`` random version-4 UUIDs from ``rng``, each as a COPY field (length + 16 bytes)."""
    raw = bytearray(rng.randbytes(16 * n))
    raw[6::16] = raw[6::16].translate(_V4)
    raw[8::16] = raw[8::16].translate(_VARIANT)
    data = bytes(raw)
    return [_UUID_LEN + data[i:i + 16] for i in range(0, 16 * n, 16)]


def uuid_of(field_bytes: bytes) -> uuid.UUID:
    return uuid.UUID(bytes=field_bytes[4:])


def subject_uuid(code: str) -> uuid.UUID:
    """The id a subject gets when the seeder creates it (fixed per code)."""
    return uuid_of(new_ids(random.Random(f"studyhub-subject:{code}"), 1)[0])


def _ascii_slug(name: str) -> str:
    plain = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    return "".join(ch for ch in plain.lower() if ch.isalnum())


def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


# ------------------------------------------------------------------------ batches
@dataclass
class Batch:
    """Encoded rows of some students, per table, ready for COPY."""

    rows: dict[str, list[bytes]] = field(
        default_factory=lambda: {t: [] for t in SEEDED_TABLES}
    )
    heavy_student_id: uuid.UUID | None = None

    def counts(self) -> dict[str, int]:
        return {t: len(r) for t, r in self.rows.items()}

    def copy_data(self, table: str) -> bytes:
        """The whole binary COPY stream for ``table`` (header, tuples, trailer)."""
        return b"".join((COPY_HEADER, *self.rows[table], COPY_TRAILER))


# --------------------------------------------------------------------- text pools
@dataclass(frozen=True)
class _SubjectText:
    """Pre-encoded text of one subject: note titles and paragraphs, card sides, AI turns."""

    titles: tuple[bytes, ...]
    paragraphs: tuple[bytes, ...]
    cards: tuple[tuple[bytes, bytes], ...]
    prompts: tuple[tuple[bytes, int], ...]  # (field, characters)
    responses: tuple[tuple[bytes, int], ...]


def _subject_text(code: str, name: str, topics: tuple[str, ...],
                  terms: tuple[tuple[str, str], ...]) -> _SubjectText:
    rng = random.Random(f"studyhub-seed-text:{code}")

    def fill(template: str) -> str:
        (t1, d1), (t2, d2) = rng.sample(terms, 2)
        topic = rng.choice(topics)
        return template.format(
            topic=topic, Topic=_cap(topic), term=t1, Term=_cap(t1), definition=d1,
            Definition=_cap(d1), term2=t2, definition2=d2, subject=name,
        )

    paragraphs = tuple(
        " ".join(fill(rng.choice(words.NOTE_SENTENCES)) for _ in range(rng.randint(3, 5))).encode()
        for _ in range(48)
    )
    titles = tuple(text_field(f"{_cap(t)}: {k}") for t in topics for k in words.NOTE_KINDS)
    cards = []
    for _ in range(96):
        front, back = rng.choice(words.CARD_SIDES)
        (t1, d1), (t2, d2) = rng.sample(terms, 2)
        topic = rng.choice(topics)
        values = dict(topic=topic, Topic=_cap(topic), term=t1, Term=_cap(t1), definition=d1,
                      Definition=_cap(d1), term2=t2, definition2=d2)
        cards.append((text_field(front.format(**values)), text_field(back.format(**values))))
    prompts = []
    for _ in range(40):
        text = fill(rng.choice(words.AI_PROMPTS))
        prompts.append((text_field(text), len(text)))
    responses = []
    for _ in range(40):
        paras = [" ".join(fill(rng.choice(words.AI_RESPONSE_SENTENCES))
                          for _ in range(rng.randint(2, 4))) for _ in range(rng.randint(1, 3))]
        text = fill(rng.choice(words.AI_RESPONSE_OPENERS)) + " " + "\n\n".join(paras)
        responses.append((text_field(text), len(text)))
    return _SubjectText(titles, paragraphs, tuple(cards), tuple(prompts), tuple(responses))


def _weighted(pairs) -> tuple:
    return tuple(item for item, weight in pairs for _ in range(weight))


# ------------------------------------------------------------- packed FSRS histories
@dataclass(frozen=True)
class _PackedHistory:
    steps: tuple[tuple[int, int, int, bytes], ...]  # offset_us, session, due_offset_us, tail
    card_tail: bytes  # state, step, stability, difficulty, reps, lapses
    last_offset_us: int
    due_offset_us: int


# A card never reviewed: Learning, step 0, no stability or difficulty yet, no reps or lapses.
_NEW_CARD_TAIL = _INT2(2, 1) + _INT2(2, 0) + NULL + NULL + _INT4(4, 0) + _INT4(4, 0)


def _pack_pool(pool: HistoryPool) -> dict[int, tuple[_PackedHistory, ...]]:
    packed: dict[int, tuple[_PackedHistory, ...]] = {}
    for length, histories in pool.by_length.items():
        out = []
        for h in histories:
            steps = tuple(
                (s.offset_us, s.session, s.due_offset_us,
                 _REVIEW_TAIL(2, s.rating, 2, s.state, 8, s.stability, 8, s.difficulty,
                              8, s.elapsed_days, 8, s.scheduled_days))
                for s in h.steps
            )
            tail = (_INT2(2, h.state) + (NULL if h.step is None else _INT2(2, h.step))
                    + _FLOAT8(8, h.stability) + _FLOAT8(8, h.difficulty)
                    + _INT4(4, len(h.steps)) + _INT4(4, h.lapses))
            out.append(_PackedHistory(steps, tail, h.steps[-1].offset_us,
                                      h.steps[-1].due_offset_us))
        packed[length] = tuple(out)
    return packed


# Reviews per card: how many times an ordinary student has reviewed a card so far.
_NORMAL_LENGTHS = tuple(range(0, 13))
_NORMAL_LENGTH_CUM = tuple(accumulate(
    (20, 17, 20, 14, 9.5, 6, 4, 3, 2.2, 1.5, 1.1, 0.9, 0.8)))
_HEAVY_LENGTHS = tuple(range(6, 17))

_YEAR_GROUPS = _weighted(((7, 1), (8, 1), (9, 1), (10, 2), (11, 3), (12, 2), (13, 2)))
_UNRECORDED_SITTINGS = 0.08  # quick reviews outside a revision session


@dataclass
class _Note:
    id: bytes
    subject: int
    created_us: int
    body_bytes: int


class StudentGenerator:
    """Encodes every row of one student (and their user account) into a batch."""

    def __init__(self, seed: int, subject_ids: list[uuid.UUID]) -> None:
        if len(subject_ids) != len(words.SUBJECTS):
            raise ValueError("one id per subject in words.SUBJECTS is needed")
        self.seed = seed
        self.subject_fields = [_UUID_LEN + s.bytes for s in subject_ids]
        self.texts = [_subject_text(*s) for s in words.SUBJECTS]
        self._packed_pools: dict[int, dict[int, tuple[_PackedHistory, ...]]] = {}
        self.schools = tuple(text_field(f"{town} {kind}") for town in words.TOWNS
                             for kind in words.SCHOOL_KINDS)
        self.timezones = tuple(text_field(tz) for tz in _weighted(words.TIMEZONES))
        self.models = tuple(text_field(m) for m in _weighted(words.AI_MODELS))
        self.gcse = tuple(text_field(g) for g in words.GCSE_GRADES)
        self.a_level = tuple(text_field(g) for g in words.A_LEVEL_GRADES)
        durations = random.Random("studyhub-seed-durations")
        self.durations = tuple(  # review_duration_ms fields: mostly 3-15 s, a few much longer
            _INT4(4, int(min(120_000, 1_500 + durations.lognormvariate(8.7, 0.7))))
            for _ in range(1024)
        )
        # Year group → first possible birth date, in days since 2000-01-01: pupils in year Y
        # turn Y + 5 during the school year (year 7: born September 2014 to August 2015).
        self.dob_start = {
            y: date(SCHOOL_YEAR_START - y - 5, 9, 1).toordinal() - _PG_EPOCH_DATE.toordinal()
            for y in range(1, 14)
        }

    def _packed(self, cadence_days: int) -> dict[int, tuple[_PackedHistory, ...]]:
        if cadence_days not in self._packed_pools:
            self._packed_pools[cadence_days] = _pack_pool(history_pool(cadence_days))
        return self._packed_pools[cadence_days]

    # ------------------------------------------------------------------ student
    def add_student(self, batch: Batch, index: int, *, heavy: bool = False) -> uuid.UUID:
        """Append student ``index``'s rows to ``batch``; returns the student's id."""
        rng = random.Random(f"studyhub-seed:{self.seed}:{index}")
        rnd = rng.random
        rows = batch.rows
        user_id, student_id = new_ids(rng, 2)
        tenure_days = 1_100.0 if heavy else 14 + rnd() * 526
        signup = NOW_US - int(tenure_days * US_PER_DAY)
        first = rng.choice(words.FIRST_NAMES)
        last = rng.choice(words.LAST_NAMES)
        domain = rng.choice(words.EMAIL_DOMAINS)
        email = f"{_ascii_slug(first)}.{_ascii_slug(last)}+s{self.seed}n{index}@{domain}"
        password_hash = (b"$argon2id$v=19$m=65536,t=3,p=4$"
                         + base64.b64encode(rng.randbytes(16)).rstrip(b"=") + b"$"
                         + base64.b64encode(rng.randbytes(32)).rstrip(b"="))
        updated = signup + int(rnd() * (NOW_US - signup))
        last_login = (_TS(8, NOW_US - int(rnd() * min(30 * US_PER_DAY, NOW_US - signup)))
                      if rnd() < 0.95 else NULL)
        rows["users"].append(b"".join((
            _FIELDS["users"], user_id, text_field(email), _LEN(len(password_hash)), password_hash,
            _TRUE if rnd() < 0.97 else _FALSE, _TS2(8, signup, 8, updated), last_login,
        )))
        year = rng.choice(_YEAR_GROUPS)
        dob_days = self.dob_start[year] + int(rnd() * 365)
        rows["students"].append(b"".join((
            _FIELDS["students"], student_id, user_id, text_field(f"{first} {last}"),
            _INT4(4, dob_days), rng.choice(self.schools), _INT2(2, year),
            rng.choice(self.timezones), _TS(8, signup + int(rnd() * 5 * US_PER_S)),
        )))

        # enrolments
        enrolled = rng.sample(range(len(self.subject_fields)), 5 if heavy else rng.randint(2, 5))
        grades = self.gcse if year in (10, 11) else self.a_level if year >= 12 else None
        for subject in enrolled:
            rows["student_subjects"].append(b"".join((
                _FIELDS["student_subjects"], student_id, self.subject_fields[subject],
                _TS(8, signup + int(rnd() * 3 * US_PER_DAY)),
                rng.choice(grades) if grades else NULL,
            )))

        notes = self._notes(rng, rows["notes"], student_id, enrolled, signup,
                            600 if heavy else rng.randint(14, 26))
        self._cards_and_reviews(rng, rows, student_id, enrolled, notes, signup, heavy)
        self._ai_interactions(rng, rows["ai_interactions"], student_id, enrolled, notes,
                              signup, 300 if heavy else rng.randint(6, 14))
        sid = uuid_of(student_id)
        if heavy:
            batch.heavy_student_id = sid
        return sid

    # -------------------------------------------------------------------- notes
    def _notes(self, rng: random.Random, out: list[bytes], student_id: bytes,
               enrolled: list[int], signup: int, count: int) -> list[_Note]:
        rnd = rng.random
        span = NOW_US - signup - US_PER_HOUR
        head = _FIELDS["notes"]
        notes = []
        for note_id in new_ids(rng, count):
            subject = rng.choice(enrolled)
            text = self.texts[subject]
            created = signup + int(rnd() * span)
            edited = rnd() < 0.5
            updated = min(NOW_US, created + int(rnd() * 20 * US_PER_DAY)) if edited else created
            body = b"\n\n".join(rng.sample(text.paragraphs, rng.randint(3, 6)))
            out.append(b"".join((
                head, note_id, student_id, self.subject_fields[subject], rng.choice(text.titles),
                _LEN(len(body)), body, _TS2(8, created, 8, updated),
            )))
            notes.append(_Note(note_id, subject, created, len(body)))
        return notes

    # ------------------------------------------------------- flashcards, reviews, sessions
    def _cards_and_reviews(self, rng: random.Random, rows: dict[str, list[bytes]],
                           student_id: bytes, enrolled: list[int], notes: list[_Note],
                           signup: int, heavy: bool) -> None:
        """Flashcards, their reviews and the sessions the reviews happened in.

        The student sits down every ``cadence`` days at about the same hour; each card gets a
        pooled FSRS history for that cadence, shifted to start in the first session after the
        card was made, so every review falls in one of the student's sessions."""
        rnd = rng.random
        cadence_days = 1 if heavy else min(
            CADENCES_DAYS, key=lambda d: abs(d - (NOW_US - signup) / US_PER_DAY / (8 + 5 * rnd())))
        cadence = cadence_days * US_PER_DAY
        pool = history_pool(cadence_days)
        packed = self._packed(cadence_days)
        first_day = signup - signup % US_PER_DAY + US_PER_DAY
        grid = first_day + int((15 + 6 * rnd()) * US_PER_HOUR)  # start of session 0
        # sessions so far; the last starts 90 minutes before the clock, so every sitting (up to
        # an hour, plus a card's few minutes of shift) is over by DATASET_NOW
        sessions = max(0, (NOW_US - 90 * US_PER_MINUTE - grid) // cadence + 1)

        card_rows = rows["flashcards"]
        head = _FIELDS["flashcards"]
        card_ids: list[bytes] = []
        card_subjects: list[int] = []
        # (time, card number, step number, session number) of every review
        reviews: list[tuple[int, int, int, int]] = []
        histories: dict[int, tuple[int, _PackedHistory]] = {}  # card number → (shift, history)
        span = NOW_US - signup - US_PER_HOUR

        def add_cards(count: int) -> None:
            if heavy:
                lengths = [rng.choice(_HEAVY_LENGTHS) for _ in range(count)]
            else:
                lengths = rng.choices(_NORMAL_LENGTHS, cum_weights=_NORMAL_LENGTH_CUM, k=count)
            for card_id, length in zip(new_ids(rng, count), lengths, strict=True):
                if notes and rnd() < 0.7:
                    note = rng.choice(notes)
                    subject, note_field = note.subject, note.id
                    created = min(NOW_US - US_PER_S, note.created_us + int(rnd() * 3 * US_PER_HOUR))
                else:
                    subject, note_field = rng.choice(enrolled), NULL
                    created = signup + int(rnd() * span)
                front, back = rng.choice(self.texts[subject].cards)
                first_session = max(0, -(-(created - grid) // cadence))
                found = (pool.pick(rng, length, sessions - 1 - first_session)
                         if length else None)
                number = len(card_ids)
                card_ids.append(card_id)
                card_subjects.append(subject)
                if found is None:
                    card_rows.append(b"".join((
                        head, card_id, student_id, self.subject_fields[subject], note_field,
                        front, back, _TS(8, created), NULL, _TS2(8, created, 8, created),
                        _NEW_CARD_TAIL,
                    )))
                    continue
                h = packed[found[0]][found[1]]
                shift = grid + first_session * cadence + int(rnd() * 10 * US_PER_MINUTE)
                last = shift + h.last_offset_us
                card_rows.append(b"".join((
                    head, card_id, student_id, self.subject_fields[subject], note_field,
                    front, back, _TS4(8, shift + h.due_offset_us, 8, last, 8, created, 8, last),
                    h.card_tail,
                )))
                histories[number] = (shift, h)
                reviews.extend((shift + offset, number, i, first_session + session)
                               for i, (offset, session, _due, _tail) in enumerate(h.steps))

        if heavy:
            while len(card_ids) < HEAVY_MIN_FLASHCARDS or len(reviews) < HEAVY_MIN_REVIEWS:
                add_cards(1_000)
        else:
            add_cards(rng.randint(45, 75))

        reviews.sort()
        session_of = self._sessions(rng, rows["revision_sessions"], student_id, reviews,
                                    card_subjects)
        review_ids = new_ids(rng, len(reviews))
        durations = self.durations
        review_rows = rows["flashcard_reviews"]
        head = _FIELDS["flashcard_reviews"]
        for k, (when, number, i, session) in enumerate(reviews):
            shift, h = histories[number]
            _offset, _session, due_offset, tail = h.steps[i]
            review_rows.append(b"".join((
                head, review_ids[k], student_id, card_ids[number], session_of[session],
                # recorded_at = reviewed_at: seeded reviews reached the server as they happened
                _TS3(8, when, 8, when, 8, shift + due_offset), durations[rng.getrandbits(10)],
                tail,
            )))

    def _sessions(self, rng: random.Random, out: list[bytes], student_id: bytes,
                  reviews: list[tuple[int, int, int, int]],
                  card_subjects: list[int]) -> dict[int, bytes]:
        """One revision session per sitting with reviews (a few sittings, quick reviews on the
        phone, are not recorded as sessions). Returns session number → id field (or NULL)."""
        sittings: dict[int, list[tuple[int, int, int, int]]] = {}
        for review in reviews:  # in time order, so sittings come out in time order too
            sittings.setdefault(review[3], []).append(review)
        session_of: dict[int, bytes] = {}
        head = _FIELDS["revision_sessions"]
        rnd = rng.random
        for (number, sitting), session_id in zip(sittings.items(), new_ids(rng, len(sittings)),
                                                 strict=True):
            if rnd() < _UNRECORDED_SITTINGS:
                session_of[number] = NULL
                continue
            subjects = {card_subjects[r[1]] for r in sitting}
            subject = self.subject_fields[subjects.pop()] if len(subjects) == 1 else NULL
            started = sitting[0][0] - int((20 + rnd() * 280) * US_PER_S)
            ended = sitting[-1][0] + int((15 + rnd() * 120) * US_PER_S)
            out.append(b"".join((
                head, session_id, student_id, subject,
                _SESSION_TAIL(8, started, 8, ended, 4, len(sitting)),
            )))
            session_of[number] = session_id
        return session_of

    # ----------------------------------------------------------- AI interactions
    def _ai_interactions(self, rng: random.Random, out: list[bytes], student_id: bytes,
                         enrolled: list[int], notes: list[_Note], signup: int,
                         count: int) -> None:
        rnd = rng.random
        head = _FIELDS["ai_interactions"]
        span = NOW_US - signup - US_PER_HOUR
        for ai_id in new_ids(rng, count):
            x = rnd()
            note_chars = 0
            if notes and x < 0.5:
                note = rng.choice(notes)
                subject, subject_field, note_field = (
                    note.subject, self.subject_fields[note.subject], note.id)
                created = min(NOW_US - US_PER_S,
                              note.created_us + int(rnd() * 10 * US_PER_DAY))
                note_chars = note.body_bytes
            else:
                subject = rng.choice(enrolled)
                # some questions are general: no subject chosen in the app
                subject_field = NULL if x > 0.9 else self.subject_fields[subject]
                note_field = NULL
                created = signup + int(rnd() * span)
            text = self.texts[subject]
            prompt, prompt_chars = rng.choice(text.prompts)
            response, response_chars = rng.choice(text.responses)
            prompt_tokens = 120 + int(rnd() * 250) + prompt_chars // 4 + note_chars // 4
            completion_tokens = max(1, response_chars // 4 + int(rnd() * 40) - 10)
            latency_ms = 180 + completion_tokens * int(8 + rnd() * 27) + int(rnd() * 400)
            out.append(b"".join((
                head, ai_id, student_id, subject_field, note_field, rng.choice(self.models),
                prompt, response, _TS(8, created),
                _INT4x3(4, prompt_tokens, 4, completion_tokens, 4, latency_ms),
            )))



# -------------------------------------------------------------------- encoded batches
@dataclass
class EncodedBatch:
    """A batch as one binary COPY stream per table, with its row counts."""

    data: dict[str, bytes]
    counts: dict[str, int]
    heavy_student_id: str | None


def encode(batch: Batch) -> EncodedBatch:
    counts = batch.counts()
    return EncodedBatch(
        data={t: batch.copy_data(t) for t in SEEDED_TABLES if counts[t]},
        counts=counts,
        heavy_student_id=str(batch.heavy_student_id) if batch.heavy_student_id else None,
    )


def encoded_batches(seed: int, subject_ids: list[uuid.UUID], first_number: int, students: int,
                    heavy_student: bool, batch_students: int) -> Iterator[EncodedBatch]:
    """Students ``first_number`` onwards (then the heavy one), ``batch_students`` at a time."""
    generator = StudentGenerator(seed, subject_ids)
    numbers = range(first_number, first_number + students)
    for start in range(0, students, batch_students):
        batch = Batch()
        for number in numbers[start:start + batch_students]:
            generator.add_student(batch, number)
        yield encode(batch)
    if heavy_student:
        batch = Batch()
        generator.add_student(batch, first_number + students, heavy=True)
        yield encode(batch)
