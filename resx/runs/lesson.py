"""The guided lesson (design.md "Pages" 7): the paper's argument in steps a class can run.

Each `Step` asks a question the student answers before running, names the runs that answer it
(changes to one small base configuration: a few seconds each on 2 cores), and reads the right
choice from those runs' results (`Step.answer`), never from a table of expected answers. The
reveal (`Step.reveal`) is two or three sentences built from the same numbers. Pure data and
logic: the Streamlit side is ui/lesson.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

from ..core.config import RunConfig

# Small enough for a few seconds a run on 2 cores (measured: 2-7 s), large enough that the mechanism
# shows at position 2 of a width-32 post-LN MLP: the descent condition observed, Delta_R above 2 SE.
LESSON_BASE = RunConfig(n=400, n_probe=400, n_test=400, n_pop=16384, width=32, depth=4, position=2,
                        epochs=4, finetune_epochs=1)
NARROW_WIDTH = 4
MORE_DATA_N = 1600


@dataclass(frozen=True)
class Step:
    key: str                 # in the URL (?step=...) and on the class board
    title: str
    intro: str               # what the student is about to see, one or two sentences
    question: str
    choices: tuple[str, ...]
    panel: str               # which panel answers: preservation, jumpboard, margins, certificates, control
    theory: str              # anchor on the Theory page
    answer_fn: Callable[[list[dict]], int] = field(repr=False)
    reveal_fn: Callable[[list[dict]], str] = field(repr=False)
    changes: tuple[dict, ...] = ({},)  # one run per entry: changes to the lesson configuration

    def configs(self, base: RunConfig = LESSON_BASE) -> list[RunConfig]:
        """The runs this step needs; a change that the base already has is the base itself."""
        return [base.replace(**c) if c else base for c in self.changes]

    def answer(self, results: list[dict]) -> int:
        """Index of the right choice, read from the finished runs' results."""
        return self.answer_fn(results)

    def reveal(self, results: list[dict]) -> str:
        return self.reveal_fn(results)


def _num(x: float, digits: int = 3) -> str:
    """A plain-text number without e-notation (the page renders it; resx never draws)."""
    if x is None or not math.isfinite(x):
        return str(x)
    if x != 0 and (abs(x) >= 10 ** (digits + 2) or abs(x) < 10 ** -(digits + 1)):
        exponent = math.floor(math.log10(abs(x)))
        return f"{x / 10 ** exponent:.{max(digits - 1, 0)}f} × 10^{exponent}"
    return f"{x:.{digits}g}"


def _risk(x: float) -> str:
    """A risk in nats, to four decimals (risks are compared to one another, so one format)."""
    return f"{x:.4f}"


def _margin(result: dict) -> dict:
    position = result["config"]["position"]
    return next(m for m in result["margins"] if m["position"] == position)


# -- step 1: insertion preserves the function ---------------------------------------------------
def _preservation_answer(results):
    ins = results[0]["insertion"]
    if ins["max_abs_logit_diff"] < 1e-4:
        return 0
    return 1 if ins["relative_diff"] < 0.05 else 2


def _preservation_reveal(results):
    ins, pos = results[0]["insertion"], results[0]["config"]["position"]
    return (f"The largest change of any output on the training sample was {_num(ins['max_abs_logit_diff'])}: "
            f"float rounding. The new block's last layer starts at zero, so the block adds nothing to the "
            f"residual stream after block {pos}, and the expanded network computes the old function exactly; "
            f"only {len(ins['live_parameters'])} of its parameters have a nonzero gradient there.")


# -- step 2: a descent direction exists, and the jumpboard lowers L -----------------------------
def _jumpboard_answer(results):
    t = results[0]["terms"]
    d, se = t["Delta_R"], t.get("Delta_R_se") or 0.0
    return 0 if d > 2 * se else (2 if d < -2 * se else 1)


def _jumpboard_reveal(results):
    r = results[0]
    t, m = r["terms"], _margin(r)
    return (f"At the new block the squared gradient norm U_P is {_num(m['kappa2_U'])} ± {_num(m['kappa2_U_se'], 2)}, "
            f"so a first-order descent direction exists. One line-search step along it, chosen on the probe "
            f"sample P only, moved the population risk L from {_risk(r['old']['L_pop'])} to "
            f"{_risk(r['f_J']['L_pop'])}: Delta_R = {_num(t['Delta_R'])} ± {_num(t.get('Delta_R_se') or 0, 2)}.")


# -- step 3: width makes the weak signal observable ---------------------------------------------
def _width_answer(results):
    wide, narrow = (_margin(r)["observed"] for r in results)
    return {(True, False): 0, (False, True): 1, (True, True): 2, (False, False): 3}[(wide, narrow)]


def _width_reveal(results):
    parts = []
    for r in results:
        m = _margin(r)
        parts.append(f"width {r['config']['width']}: U_P = {_num(m['kappa2_U'])}, "
                     f"{_num(m['kappa2_U'] / m['kappa2_U_se'], 2)} standard errors above 0")
    text = "; ".join(parts)
    return (text[0].upper() + text[1:] + ". The squared mean gradient sums over the block's width while its noise grows more slowly: when "
            "the coordinates are weakly correlated, the signal-to-noise ratio grows like sqrt(width × n), so "
            "width makes a weak descent signal observable on the same data.")


# -- step 4: data decides whether the statistical cost is paid ----------------------------------
def _certified(route: dict) -> bool:
    return route["verdict"] in ("strict", "no_worse")


def _certificates_answer(results):
    routes = results[-1]["routes"]
    a, b = _certified(routes["A"]), _certified(routes["B"])
    return {(True, True): 0, (True, False): 1, (False, True): 2, (False, False): 3}[(a, b)]


def _certificates_reveal(results):
    small, large = results
    ts, tl = small["terms"], large["terms"]
    need = [x for x in (tl.get("n_nonvacuous_M"), tl.get("n_nonvacuous_K")) if x is not None]
    return (f"The guarantee must pay for the whole class of networks it could have fitted: 2 eps_K = "
            f"{_num(2 * ts['eps_K'])} at n = {ts['n']} and {_num(2 * tl['eps_K'])} at n = {tl['n']}, against a "
            f"gain of {_num(tl['Delta_R'] + tl['Delta_ERM'])}. The cost shrinks like 1/sqrt(n) times the weights' "
            f"norms; with these norms it falls below the loss range only from n = {_num(max(need)) if need else 'never'}.")


# -- step 5: expansion against simply training on -----------------------------------------------
def _control_answer(results):
    return {"beats": 0, "loses": 1, "ties": 2}[results[0]["expansion_beats_control"]["verdict"]]


def _control_reveal(results):
    b, epochs = results[0]["expansion_beats_control"], results[0]["config"]["finetune_epochs"]
    return (f"After {epochs} epoch{'s' if epochs != 1 else ''} each, the expanded model reached "
            f"{b['risk']} = {_risk(b['new'])} and the control, the old model trained on for as many steps, "
            f"{_risk(b['control'])}: a difference of {_num(b['difference'])} ± {_num(b['difference_se'], 2)}. "
            f"Expansion is worth its new parameters only when it beats this control, not the old model.")


STEPS: tuple[Step, ...] = (
    Step("preserve", "Insertion preserves the function",
         "We train a small post-normalized residual network, then insert a new residual block whose last "
         "layer is zero.",
         "How much do the network's outputs change when the block is inserted?",
         ("not at all (up to float rounding)", "a little (about 1%)", "a lot"),
         "preservation", "3-depth-expansion", _preservation_answer, _preservation_reveal),
    Step("jumpboard", "A descent direction exists; the jumpboard lowers the risk",
         "The old network sits at a minimum of its training loss. At the new block, though, the gradient "
         "need not be zero.",
         "The jumpboard takes one line-search step at the new block, along the probe sample's gradient. "
         "What happens to the population risk L?",
         ("it goes down (by more than 2 standard errors)", "no change within noise", "it goes up"),
         "jumpboard", "6-jumpboard", _jumpboard_answer, _jumpboard_reveal),
    Step("width", "Width makes the weak signal observable",
         f"The same network at width {LESSON_BASE.width} and at width {NARROW_WIDTH}: is the mean gradient at "
         "the new block distinguishable from noise (its lower confidence bound above 0)?",
         "Where is the descent condition observed?",
         ("only in the wide network", "only in the narrow network", "in both", "in neither"),
         "margins", "5-signals", _width_answer, _width_reveal,
         ({}, {"width": NARROW_WIDTH})),
    Step("certificates", "Data decides whether the statistical cost is paid",
         "A certificate turns the observed gain into a guarantee on the test risk, after paying a "
         "complexity cost for the class of networks.",
         f"With {MORE_DATA_N // LESSON_BASE.n} times more data (n = {MORE_DATA_N}), which route certifies that "
         "the expanded network is no worse?",
         ("both routes", "route A only", "route B only", "neither"),
         "certificates", "8-the-two-test-risk-guarantees", _certificates_answer, _certificates_reveal,
         ({}, {"n": MORE_DATA_N})),
    Step("control", "Expansion against simply training on",
         "The fair comparison for an expanded network is the old one trained for as many more steps.",
         "After the same number of fine-tuning steps, which has the lower population risk?",
         ("the expanded network", "the control (old network trained on)", "a tie (within 2 standard errors)"),
         "control", "8-the-two-test-risk-guarantees", _control_answer, _control_reveal),
)
STEP_KEYS = tuple(s.key for s in STEPS)


def step_index(key: str | None) -> int:
    """Position of step `key` (a 1-based number or a key); 0 for anything else."""
    if key is None:
        return 0
    if key.isdigit() and 1 <= int(key) <= len(STEPS):
        return int(key) - 1
    return STEP_KEYS.index(key) if key in STEP_KEYS else 0
