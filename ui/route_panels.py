"""The Lab's panel for the two test-risk guarantees: gains, costs, verdicts, vacuity, the control."""
from __future__ import annotations

import streamlit as st

from .text import fmt, readable, sentence, theory_link

VERDICTS = {"strict": ("strict improvement certified", "green"), "no_worse": ("no-worse certified", "blue"),
            "not_certified": ("not certified", "orange")}


def routes_panel(result: dict):
    """Routes A and B as waterfalls with their verdicts, the gain against the cost, and which is tighter."""
    routes, terms = result.get("routes"), result.get("terms")
    if not routes or not terms:
        st.caption("Appear when the fine-tune and the control have finished.")
        return
    from resx.figures import live as plots
    new = result.get("new", {})
    observed = new.get("L_pop") if new.get("L_pop") is not None else new.get("L_T")
    gain = (terms.get("Delta_R_used") or 0.0) + terms["Delta_ERM"]
    st.markdown(f"Gains: representational $\\Delta_R$ = {fmt(terms.get('Delta_R_used'))} ({terms.get('Delta_R_source', '')}), "
                f"optimization $\\Delta_{{\\mathrm{{ERM}}}}$ = {fmt(terms['Delta_ERM'])}. Complexity bound: **{terms['bound_name']}**, "
                f"loss range $c$ = {fmt(terms['c'])}. " + theory_link("7-complexity-terms", "complexity terms"))
    cols = st.columns(2)
    for col, key, title in ((cols[0], "A", "Route A (population)"), (cols[1], "B", "Route B (train/test)")):
        route = routes[key]
        label, color = VERDICTS.get(route["verdict"], (route["verdict"], "gray"))
        with col:
            st.markdown(f"**{title}**: :{color}-badge[{label}]  \nbound on $L(f_{{\\mathrm{{new}}}})$: {fmt(route['bound'])}; "
                        f"gain {fmt(gain)} against cost {fmt(route['cost'])}")
            st.plotly_chart(plots.route_waterfall(route, observed), key=f"route{key}")
            if route.get("assumption"):
                st.caption(readable(route["assumption"]))
    vacuous = [name for name, flag in (("eps_M", terms.get("vacuous_M")), ("eps_K", terms.get("vacuous_K"))) if flag]
    if vacuous:
        need = [terms.get("n_nonvacuous_M"), terms.get("n_nonvacuous_K")]
        need = [n for n in need if n is not None]
        st.warning(f"The complexity terms are vacuous here ($2\\varepsilon \\ge c$ = {fmt(terms['c'])}): a norm-based bound of this "
                   f"kind stops being vacuous only from n = {fmt(max(need)) if need else 'never'} "
                   f"(this run has n = {fmt(terms['n'])}). Observed gaps $|L_T - L_S|$: $f_{{\\mathrm{{new}}}}$ {fmt(terms.get('gap_new'))}, "
                   f"$f_J$ {fmt(terms.get('gap_J'))}.")
    if routes.get("tighter_reason"):
        st.caption(sentence(readable(routes["tighter_reason"])) + ". " + theory_link("8-the-two-test-risk-guarantees"))
    beats = result.get("expansion_beats_control")
    if beats:
        verdict = {"beats": "beat", "loses": "lost to", "ties": "tied with (within 2 paired standard errors)"}[
            beats["verdict"]]
        st.markdown(f"The fine-tuned expanded model **{verdict}** the control, which trained the old model on "
                    f"for as many steps: {beats['risk']} {fmt(beats['new'])} against {fmt(beats['control'])}, "
                    f"difference {fmt(beats['difference'], beats['difference_se'])}.")
    with st.expander("Every term"):
        st.table({k: [fmt(v) if isinstance(v, float) else str(v)] for k, v in terms.items()})
