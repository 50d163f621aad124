"""The Lab's panels for one run: status banner, the chosen position's margins, function preservation."""
from __future__ import annotations

import streamlit as st

from .text import fmt, theory_link

PHASE_LABELS = {"base": "train base", "margins": "estimate margins", "insert": "insert",
                "jumpboard": "jumpboard", "new": "fine-tune (expanded)", "control": "fine-tune (control)"}
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
    """The chosen position's margin estimates with their one-sided bounds and the 'observed' badge."""
    margins = result.get("margins")
    if not margins:
        return
    from resx.figures import live as plots
    chosen = config.get("position")
    st.plotly_chart(plots.margin_estimates(margins, chosen), key="margins")
    m = next((m for m in margins if m["position"] == chosen), None)
    if m is None:
        return
    badge = ":green-badge[descent condition observed]" if m["observed"] else ":orange-badge[descent condition not observed]"
    st.markdown(f"Position **{chosen}**: {badge}")
    cols = st.columns(3)
    cols[0].metric("$U_P$ (probe)", fmt(m["kappa2_U"], digits=3), help="one-sided lower bound " + fmt(m.get("kappa2_U_lcb")))
    cols[0].caption(f"± {fmt(m['kappa2_U_se'], digits=2)} (1 SE)")
    cols[1].metric(r"$\|G_S\|^2$ (train)", fmt(m["kappa2_train_naive"], digits=3))
    cols[2].metric(r"$\kappa^2$ (population)", fmt(m.get("kappa2_pop"), digits=3))
    if m.get("kappa2_pop_se") is not None:
        cols[2].caption(f"± {fmt(m['kappa2_pop_se'], digits=2)} (1 SE)")
    st.caption("Observed means the one-sided lower confidence bound of $U_P$ is above 0. The training margin is "
               "smaller because the old model was fit on S. " + theory_link("4-descent-margins"))


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
