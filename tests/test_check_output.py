"""`expost check` prints whole claim sentences, says what each count means, and sums up."""

LONG = ('CLAIMS = [{"claim": "The final value is below one for every decay rate we tried, which is what an '
        'exponential decay from a start below two must do.", "check": lambda r: r.scalar("final") < 1, '
        '"per": "rate"},\n    {"claim": "A faster rate ends lower.", "check": lambda r: '
        'bool((r.where(rate=1.0).scalar("final") < r.where(rate=0.5).scalar("final")).all())}]\n')


def test_whole_sentences_counts_that_say_what_they_mean_and_a_summary(ws, expost):
    path = ws / "experiments" / "toy.py"
    text = path.read_text()
    start, end = text.index("CLAIMS = ["), text.index("]\n\n\ndef run") + 2
    path.write_text(text[:start] + LONG + text[end:])
    assert expost("run", "toy", "-j", "1").exit_code == 0
    r = expost("check", "toy")
    assert r.exit_code == 0, r.output
    table = r.stdout
    flat = " ".join(line[12:60].strip() for line in table.splitlines())  # the claim column, rows joined
    assert "which is what an exponential decay from a start below two must do." in " ".join(flat.split())
    assert "..." not in table
    assert "5/5 hold (need all)" in table and "one test on all 5" in table
    assert "3 claim result(s): 3 holds; 3 as expected" in r.stderr
