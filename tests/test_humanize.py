"""Shared formatting: the same size, duration and one-line statement in every renderer."""

from studyhub.humanize import human_bytes, human_s, short


def test_sizes_and_durations():
    assert [human_bytes(n) for n in (None, 512, 1536, 5 * 1024**3)] == \
        ["-", "512 B", "1.5 kB", "5.0 GB"]
    assert [human_s(s) for s in (None, 0.25, 4.2, 720, 12600)] == \
        ["-", "250ms", "4.2s", "12min", "3.5h"]


def test_short_drops_comments_the_way_postgresql_lexes_them():
    """Comments go (PostgreSQL's lexer finds them); comment-like text inside a string literal
    stays; a statement cut short (pg_stat_statements truncates) is still shown."""
    text = "/* app:notes */ select '/* kept */ -- kept' -- trailing\n  from notes"
    assert short(text) == "select '/* kept */ -- kept' from notes"
    assert short("select 'unterminated", 15) == "select 'unterm…"
    assert short(None) == ""
