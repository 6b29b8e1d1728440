"""What the command-line jobs share: an argument parser whose errors are one line, and value checks."""
from __future__ import annotations

import argparse
import math
import sys


class Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit status 2
        sys.stderr.write(f"{self.prog}: error: {message}\n")
        sys.exit(2)


def _checked(convert, ok, rule: str, name: str):
    """An argparse type: ``convert(text)``, refused with "must be RULE, got TEXT" unless ``ok``."""
    def parse(text: str):
        value = convert(text)
        if not ok(value):
            raise argparse.ArgumentTypeError(f"must be {rule}, got {text}")
        return value
    parse.__name__ = name  # argparse names it in "invalid NAME value" errors
    return parse


positive_int = _checked(int, lambda v: v >= 1, ">= 1", "positive_int")
non_negative_int = _checked(int, lambda v: v >= 0, ">= 0", "non_negative_int")
finite_float = _checked(float, math.isfinite, "a finite number", "finite_float")
non_negative_float = _checked(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0",
                              "non_negative_float")
probability = _checked(float, lambda v: 0 <= v <= 1, "in [0, 1]", "probability")


def int_list(text: str) -> tuple[int, ...]:
    """``"1,3"`` -> (1, 3); empty text -> ()."""
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, got {text!r}") from None
