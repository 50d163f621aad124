"""The Lab's panels for one run: status banner, the chosen position's margins, function preservation."""
from __future__ import annotations

import streamlit as st

from .text import fmt, theory_link

PHASE_LABELS = {"base": "train base", "margins": "estimate margins", "insert": "insert",
                "jumpboard": "jumpboard", "new": "fine-tune (expanded)", "control": "fine-tune (control)",
                "certify": "certify (hold-out and PAC-Bayes)"}


def status_banner(container, snap):
    """The final status of a run, with its message (divergence step and loss, failure, cancellation)."""
    text = f"Run `{snap.run_id}`: **{snap.status}**"
    if snap.message:
        message = snap.message
        if message.lower().startswith(snap.status):  # "cancelled during base at step 784"
            message = message[len(snap.status):].lstrip(" :.")
        for phase, label in PHASE_LABELS.items():
            message = message.replace(f"during {phase} ", f"during {label} ").replace(f"of {phase}:", f"of {label}:")
        text += f": {message}"
    {"done": container.success, "cancelled": container.warning, "interrupted": container.warning}.get(
        snap.status, container.error)(text)


def margin_panel(result: dict, config: dict):
    """The chosen position's margin estimates, and two badges that are different claims (theory.md 4b):
    "gradient nonzero" (U_P's lower bound above 0) and "descent observable" (the P1 direction's
    one-sided slope on P2 has its upper bound below 0)."""
    margins = result.get("margins")
    if not margins:
        return
    from resx.figures import live as plots
    chosen = config.get("position")
    st.plotly_chart(plots.margin_estimates(margins, chosen), key="margins")
    m = next((m for m in margins if m["position"] == chosen), None)
    if m is None:
        return
    nonzero = ":green-badge[gradient nonzero]" if m["observed"] else ":orange-badge[gradient not shown nonzero]"
    if m.get("descent_observable") is None:
        descent = ":gray-badge[descent not tested]"
    elif m["descent_observable"]:
        descent = ":green-badge[descent observable]"
    else:
        descent = ":orange-badge[descent not observable]"
    level = f"asymptotic z-bounds, each at level 1 - delta = {fmt(1 - config.get('delta', 0.05), digits=4)}"
    st.markdown(f"Position **{chosen}**: {nonzero} {descent} ({level})")
    cols = st.columns(2) + st.columns(2)   # two rows: four metrics do not fit a half-width column
    cols[0].metric("$U_P$ (probe)", fmt(m["kappa2_U"], digits=3), help="one-sided lower bound " + fmt(m.get("kappa2_U_lcb")))
    cols[0].caption(f"± {fmt(m['kappa2_U_se'], digits=2)} (1 SE)")
    if m.get("slope_cross") is not None:
        cols[1].metric(r"$D_{P_2}(\hat d)$ (slope)", fmt(m["slope_cross"], digits=3),
                       help="upper confidence bound " + fmt(m.get("slope_cross_ucb")))
        cols[1].caption(f"± {fmt(m.get('slope_cross_se'), digits=2)} (1 SE)")
    cols[2].metric(r"$\|G_S\|^2$ (train)", fmt(m["kappa2_train_naive"], digits=3))
    cols[3].metric(r"$\kappa^2$ (population)", fmt(m.get("kappa2_pop"), digits=3))
    if m.get("kappa2_pop_se") is not None:
        cols[3].caption(f"± {fmt(m['kappa2_pop_se'], digits=2)} (1 SE)")
    best = result.get("descent_best_position")
    multiple = ""
    if best and best.get("position") is not None:
        multiple = (f" Best of {best['positions']} positions, each tested at delta/{best['positions']} (Bonferroni, "
                    f"so the pick holds at 1 - delta; asymptotic): position {best['position']}, descent "
                    f"{'observable' if best['observable'] else 'not observable'}.")
    st.caption("Gradient nonzero: the lower confidence bound of $U_P$ (an estimate of $\\|G\\|^2$) is above 0. Descent "
               "observable: the steepest one-sided direction chosen on half $P_1$ of the probe sample still descends "
               "on the other half $P_2$ (upper confidence bound of its slope below 0). For the resnet the block sits "
               "at a ReLU kink, so a nonzero gradient does not mean that any direction descends. Both bounds are "
               "normal (z) bounds, value ± z se: asymptotic (CLT) statements, not finite-sample guarantees." + multiple
               + " The training margin is smaller because the old model was fit on S. "
               + theory_link("4b-descent-at-a-relu-kink-resnet"))


def jumpboard_note(result: dict):
    """What the jumpboard found, in words, when eta* = 0 or when P1 gave no direction (theory.md 4b)."""
    jump = result.get("jumpboard")
    if jump is None:
        if "jumpboard_note" in result:
            st.info(f"No jumpboard: {result['jumpboard_note']}")
        return
    if jump.get("note"):
        st.info(jump["note"])


def preservation_badge(result: dict, records):
    """max |f_new - f_old| on S: exact for resnet, about the LayerNorm epsilon for mlp."""
    ins = result.get("insertion")
    if ins is None:
        diff = next((r.value for r in records if r.phase == "insert" and r.name == "max_abs_logit_diff"), None)
        if diff is None:
            st.caption("Measured when the block is inserted.")
            return
        ins = {"max_abs_logit_diff": diff, "preserved": None, "live_parameters": []}
    ok = ins.get("preserved")
    badge = ":green-badge[preserved]" if ok or ok is None else ":red-badge[NOT preserved: a bug]"
    st.markdown(f"{badge} $\\max_x |f_{{\\mathrm{{new}}}}(x) - f_{{\\mathrm{{old}}}}(x)|$ on $S$ = {fmt(ins['max_abs_logit_diff'], digits=2)}"
                + (f", $|\\Delta L_S|$ = {fmt(ins['loss_diff'], digits=2)}" if "loss_diff" in ins else ""))
    if ins.get("live_parameters"):
        st.caption(r"Live parameters (nonzero gradient at $\varphi_0$): " + ", ".join(f"`{p}`" for p in ins["live_parameters"])
                   + ". " + theory_link("3-depth-expansion"))
