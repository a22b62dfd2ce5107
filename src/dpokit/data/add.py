"""``dpokit data add``: type preference pairs in (prompt, chosen, rejected), or pipe them in.

In a terminal each question is asked again until it gets an answer: an empty line re-asks that
question only, a rejected answer equal to the chosen one re-asks the rejected one. Each saved pair
is confirmed with the count so far, and written at once (nothing typed is lost to a crash).
``done`` on a line of its own ends, at any of the three questions (an unfinished pair is not
saved); so do the end of input and Ctrl-C, which say how many pairs were saved. From a pipe, lines
are read three at a time and a bad triple is skipped with a message. A missing output folder is
created, and said so (as ``data sample`` writes into a new folder too).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from dpokit.data.jsonl import write_jsonl

QUESTIONS = ("Prompt", "Chosen (better) response", "Rejected (worse) response")


class Done(Exception):
    """The user typed "done", or the input ended."""


def _pairs(n: int) -> str:
    return f"{n} pair{'s' if n != 1 else ''}"


def _is_utf8(text: str) -> bool:
    """False for input that held bytes that are not UTF-8 (read as surrogates, which no file can hold)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _named(error: OSError, path: Path) -> OSError:
    """An OSError from writing ``path`` that names it (a full disk names no file)."""
    if error.filename is None:
        error.filename = str(path)
    return error


def _open_output(path: Path) -> Path | None:
    """Check, before anything is typed, that ``path`` can be appended to (a pair typed in must not be
    lost); create its folder when missing and return that folder (else None)."""
    created = next((p for p in reversed(path.parents) if not p.exists()), None)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        existed = path.exists()
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as e:
        raise _named(e, path) from None
    if not existed:
        path.unlink()  # written again with the first pair; no empty file when none is added
    return created


class Session:
    """One run of ``data add``: reads answers from ``stream`` (a terminal when ``interactive``)."""

    def __init__(self, output: Path, stream: TextIO, interactive: bool) -> None:
        self.output, self.stream, self.interactive = output, stream, interactive
        self.added = self.skipped = 0

    def line(self, question: str) -> str:
        """One line of input (without its newline); `Done` at "done" or the end of input."""
        if self.interactive:
            try:
                text = input(f"{question}: ")
            except EOFError:
                print()
                raise Done from None
        else:
            text = self.stream.readline()
            if not text:
                raise Done
            text = text.rstrip("\r\n")
        if text.strip().lower() == "done":
            raise Done
        return text

    def ask(self, question: str, chosen: str | None = None) -> str:
        """A non-empty answer (different from ``chosen`` when given), asked again in a terminal."""
        while True:
            text = self.line(question)
            if not _is_utf8(text):
                problem = "it is not UTF-8 text (set your terminal to UTF-8); type it again, or done to finish"
            elif not text.strip():
                problem = "it is empty; type the text, or done to finish"
            elif chosen is not None and text.strip() == chosen.strip():
                problem = "it is the same as the chosen response; type a worse one, or done to finish"
            else:
                return text
            print(f"  {problem}", file=sys.stderr)

    def next_pair(self) -> dict[str, str] | None:
        """The next pair to save, or None for a triple from a pipe that is skipped."""
        if self.interactive:
            prompt = self.ask(QUESTIONS[0])
            chosen = self.ask(QUESTIONS[1])
            return {"prompt": prompt, "chosen": chosen, "rejected": self.ask(QUESTIONS[2], chosen)}
        prompt = self.line(QUESTIONS[0])
        try:
            chosen, rejected = self.line(QUESTIONS[1]), self.line(QUESTIONS[2])
        except Done:
            print("ended in the middle of a pair; that pair was not saved", file=sys.stderr)
            raise
        problem = None
        if not all(map(_is_utf8, (prompt, chosen, rejected))):
            problem = "the input is not UTF-8 text"
        elif not prompt.strip() or not chosen.strip() or not rejected.strip():
            problem = "prompt, chosen and rejected must all be non-empty"
        elif chosen.strip() == rejected.strip():
            problem = "chosen and rejected are the same"
        if problem:
            print(f"skipped: {problem}", file=sys.stderr)
            self.skipped += 1
            return None
        return {"prompt": prompt, "chosen": chosen, "rejected": rejected}

    def run(self) -> None:
        while True:
            pair = self.next_pair()
            if pair is None:
                continue
            try:
                write_jsonl(self.output, [pair], append=True)
            except OSError as e:
                raise _named(e, self.output) from None
            self.added += 1
            if self.interactive:
                print(f"saved: pair {self.added} ({_pairs(self.added)} added to {self.output} so far)\n")


def cmd_data_add(output: str) -> int:
    """Prompt / chosen / rejected, one after another, until "done", the end of input or Ctrl-C."""
    path = Path(output)
    created = _open_output(path)
    stream = sys.stdin
    session = Session(path, stream, stream.isatty())
    if created is not None:
        print(f"created the folder {created} for {path}")
    if session.interactive:
        print(f'Adding preference pairs to {path}. Type "done" at any question to finish (Ctrl-C works too).')
    code = 0
    try:
        session.run()
    except Done:
        pass
    except KeyboardInterrupt:
        print(f"\ninterrupted: {_pairs(session.added)} saved to {path}; an unfinished pair was not saved")
        code = 130
    if created is not None and not session.added:
        for folder in [path.parent, *path.parent.parents]:  # nothing saved: leave no empty folders behind
            if folder == created.parent:
                break
            try:
                folder.rmdir()
            except OSError:
                break  # something else was put there meanwhile: keep it
    if code == 0:
        print(f"added {_pairs(session.added)} to {path}" + (f" ({session.skipped} skipped)" if session.skipped else ""))
    return code
