"""The two error types of tariffs and rating, in a leaf module so both sides can raise them.

:class:`TariffError` is raised when a tariff file is loaded and lists every problem found (a bad
file is rejected as a whole). :class:`RatingError` is raised when a usage cannot be priced under a
valid plan (unknown rating group, no rate for a destination, no version effective yet); the
charging layer maps it to result 5031 RATING_FAILED and passes its message on.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class TariffProblem:
    """One thing wrong with a tariff: where (file and field path) and what."""

    source: str
    field: str
    message: str

    def __str__(self) -> str:
        return f"{self.source}: {self.field}: {self.message}"


class TariffError(ValueError):
    """A tariff was rejected; ``problems`` lists everything wrong with it, in file order."""

    problems: tuple[TariffProblem, ...]

    def __init__(self, problems: tuple[TariffProblem, ...] | list[TariffProblem]) -> None:
        self.problems = tuple(problems)
        if not self.problems:
            raise ValueError("TariffError needs at least one problem")
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''} in tariff"
        super().__init__(head + ":\n" + "\n".join(f"  {p}" for p in self.problems))


class RatingError(ValueError):
    """A usage cannot be rated; ``field`` names the input that failed (e.g. ``rating_group``)."""

    field: str

    def __init__(self, field: str, message: str) -> None:
        self.field = field
        super().__init__(message)
