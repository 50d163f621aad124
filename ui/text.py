"""How numbers and outside text are written on screen, and the links to the Theory page."""
from __future__ import annotations


def plain(text) -> str:
    """Text from a link or a user, shown as a code span: never drawn as Markdown (no links)."""
    return "`" + str(text).replace("`", "'").replace("\n", " ") + "`"


def theory_link(anchor: str, text: str = "how this is computed") -> str:
    """Markdown link to a section of the Theory page."""
    return f"[{text}](theory#{anchor})"  # relative: works under server.baseUrlPath


SUPERSCRIPT = str.maketrans("-0123456789", "⁻⁰¹²³⁴⁵⁶⁷⁸⁹")


def fmt(value, se=None, digits=4) -> str:
    """A number for reading: 0.0123, 1.34 ± 0.003, 6.69×10⁴ (no e-notation on screen)."""
    if value is None:
        return "n/a"
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return str(value)
    text = f"{value:.{digits}g}"
    if "e" in text:
        mantissa, exponent = f"{value:.{digits - 1}e}".split("e")
        text = f"{float(mantissa):.{digits}g}×10{str(int(exponent)).translate(SUPERSCRIPT)}"
    return f"{text} ± {se:.2g}" if se is not None else text
