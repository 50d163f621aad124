"""How numbers and outside text are written on screen, and the links to the Theory page."""
from __future__ import annotations

import re


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


# Symbol names as resx writes them in plain text -> LaTeX for st.markdown (names keep their case).
SYMBOLS = {"Delta_R_T": r"\Delta_R^T", "Delta_ERM": r"\Delta_{\mathrm{ERM}}", "Delta_R": r"\Delta_R",
           "eps_K": r"\varepsilon_K", "eps_M": r"\varepsilon_M", "U_P": "U_P", "f_J": "f_J",
           "f_new": r"f_{\mathrm{new}}", "f_old": r"f_{\mathrm{old}}", "L_S": "L_S", "L_T": "L_T", "L_P": "L_P",
           "L_pop": "L", "kappa^2": r"\kappa^2", "||G_S||^2": r"\|G_S\|^2", "||gbar||^2": r"\|\bar g\|^2",
           "1/sqrt(n)": r"1/\sqrt{n}", "sqrt(width × n)": r"\sqrt{\mathrm{width}\cdot n}", "phi0": r"\varphi_0",
           "theta_old": r"\theta_{\mathrm{old}}"}
_SYMBOL = re.compile("|".join(r"(?<![\w$\\])" + re.escape(k) + r"(?![\w])" for k in sorted(SYMBOLS, key=len, reverse=True)))
_E_NUMBER = re.compile(r"(?<![\w.])-?\d+(?:\.\d+)?e[+-]?\d+(?![\w.])")
_TIMES_TEN = re.compile(r"(-?\d+(?:\.\d+)?) × 10\^(-?\d+)")


def readable(text: str) -> str:
    """Plain text from resx made fit for the screen: e-notation as ×10ⁿ, symbol names as LaTeX
    ($\\varepsilon_K$ for eps_K), and nothing lower-cased."""
    text = _E_NUMBER.sub(lambda m: fmt(float(m.group())), str(text))
    text = _TIMES_TEN.sub(lambda m: f"{m.group(1)}×10{m.group(2).translate(SUPERSCRIPT)}", text)
    return _SYMBOL.sub(lambda m: f"${SYMBOLS[m.group()]}$", text)


def sentence(text: str) -> str:
    """First letter upper-cased, the rest kept (str.capitalize would turn f_J into f_j)."""
    text = str(text)
    return text[:1].upper() + text[1:]
