"""The Lab's result panels: did expansion lower the risk (the headline), the certificates, and the
paper's two norm-based routes with their waterfalls, verdicts and vacuity (theory.md 8, 8b)."""
from __future__ import annotations

import streamlit as st

from .text import fmt, readable, sentence, theory_link

SLACKS = {"hold-out paired": "the UCB's confidence width above the observed mean difference",
          "PAC-Bayes": "the bound minus the posterior's smoothed risk on fresh points",
          "norm-based route": "the bound minus the observed L(f_new)"}

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
        arithmetic = route.get("arithmetic_verdict")
        if route.get("heuristic") and arithmetic and arithmetic != "not_certified":
            label += f" (heuristic bound; its arithmetic alone would say {VERDICTS[arithmetic][0]})"
        elif route.get("heuristic"):
            label += " (heuristic bound)"
        with col:
            st.markdown(f"**{title}**: :{color}-badge[{label}]  \nbound on $L(f_{{\\mathrm{{new}}}})$: {fmt(route['bound'])}; "
                        f"gain {fmt(gain)} against cost {fmt(route['cost'])}")
            if route.get("level"):
                st.caption(f"Level: {readable(route['level'])}; {route.get('guarantee', 'finite-sample')} "
                           "(every step a finite-sample bound, none a normal approximation).")
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
    heuristic = routes["A"].get("heuristic") or []
    if heuristic:
        with st.expander("Why neither route can certify: the steps that are not theorems here"):
            st.markdown("\n".join(f"- {h}" for h in heuristic))
            st.caption("Paid for as stated: the budgets' geometric grid (its factor on R and its log term), the "
                       "McDiarmid step from the empirical to the expected Rademacher complexity, and "
                       "sqrt(mean ||x||^2) for the inputs. " + theory_link("8b-certificates-that-can-certify"))
    with st.expander("Every term"):
        st.table({k: [fmt(v) if isinstance(v, float) else str(v)] for k, v in terms.items()})


def statement_md(statement: str) -> str:
    """A certificate's statement for st.markdown: "L_{c*}(f_J) < L_{c*}(f_old)" with L_{c*} as LaTeX
    (a bare * would start italics)."""
    return readable(statement.replace("L_{c*}(", "L_c*(")).replace("L_c*(", "$L_{c^*}$(")


def pair_level(p: dict) -> str:
    """A hold-out pair's level in words: its own delta and that it is finite-sample."""
    return f"level 1 - delta/3 = {fmt(1 - p['delta'], digits=4)}, finite-sample"


def headline_panel(result: dict):
    """Did expansion lower the risk? L(f) - L(f_old) for f_new, f_J and the control, paired, with
    standard errors, and the hold-out certificate of each comparison."""
    head = result.get("headline")
    if not head:
        return
    rows = {r["model"]: r for r in head["rows"]}
    pairs = {(p["a"], p["b"]): p for p in (result.get("certificates") or {}).get("holdout", {}).get("pairs", [])}
    new = rows["new"]
    if new["lower"]:
        answer = "**Yes**: the fine-tuned expanded model's risk is lower than the old model's."
    elif new["higher"]:
        answer = "**No**: the fine-tuned expanded model's risk is *higher* than the old model's."
    else:
        answer = "**Not measurably**: the fine-tuned expanded model is within 2 standard errors of the old one."
    st.markdown(f"#### Did expansion lower the risk?  \n{answer}")
    cols = st.columns(3)
    titles = {"new": "expanded, fine-tuned (f_new)", "f_J": "jumpboard (f_J)", "control": "control (old, trained on)"}
    certs = {"new": pairs.get(("old", "new")), "f_J": pairs.get(("old", "f_J")), "control": pairs.get(("control", "new"))}
    for col, key in zip(cols, ("new", "f_J", "control")):
        r = rows[key]
        word = "lower" if r["lower"] else "higher" if r["higher"] else "within 2 SE"
        col.metric(r["label"], fmt(r["difference"]), help=f"{titles[key]}; paired on the {head['sample']} "
                   f"({head['m']} points)")
        col.caption(f"± {fmt(r['se'], digits=2)} (1 SE). {titles[key]}: {word}")
        cert = certs[key]
        if cert is not None:
            badge = ":green-badge[certified]" if cert["certified"] else ":orange-badge[not certified]"
            col.markdown(f"{badge} {statement_md(cert['statement'])}  \nupper bound on the difference {fmt(cert['ucb'])}"
                         + ("" if cert["certified"] or cert["m_to_certify"] is None
                            else f"; would certify from m = {fmt(cert['m_to_certify'])}")
                         + f"  \n{pair_level(cert)}")
    clipped = next((p for p in pairs.values() if p.get("clip") is not None), None)
    about = (f" Each certificate is about the loss clipped at one level, $L_{{c^*}}(f) = E\\min(l, c^*)$ with "
             f"$c^*$ = {fmt(clipped['clip'])} (the same level for every pair)." if clipped else "")
    st.caption(f"Paired differences on the {head['sample']}: {'population risk L' if head['risk'] == 'L' else 'test risk'}"
               f" of each model minus the old model's, on the same points; lower or higher means beyond 2 standard "
               f"errors, a normal (asymptotic) reading, not a guarantee. The badges are the hold-out certificates "
               f"below, each at delta/3 (the three together at 1 - delta), finite-sample.{about} "
               + theory_link("8b-certificates-that-can-certify"))


def certificates_panel(result: dict):
    """Every certificate: what it certifies (which model, deterministic or stochastic), its bound,
    the observed value it bounds, its level and kind (finite-sample or asymptotic), its verdict and
    where it would certify; sorted by slack, whose meaning differs by kind (SLACKS)."""
    cert = result.get("certificates")
    if not cert:
        st.caption("Appear when the fine-tune and the control have finished.")
        return
    if not cert.get("computed", True):
        st.info(cert["note"])
        return
    hold, pac = cert["holdout"], cert["pac_bayes"]
    pairs = {p["statement"]: p for p in hold.get("pairs", [])}
    routes = result.get("routes") or {}
    rows = sorted(cert["items"], key=lambda r: (r["slack"] is None, r["slack"] if r["slack"] is not None else 0))
    table = {"certificate": [], "certifies": [], "bound on": [], "model": [], "bound": [], "observed": [],
             "slack": [], "level": [], "verdict": [], "would certify at": []}
    for r in rows:
        kind = r["name"] if r["kind"] == "norm-based route" else r["kind"]
        table["certificate"].append(kind + (" (smallest slack)" if r["name"] == cert.get("tightest") else ""))
        table["certifies"].append(r["certifies"])
        table["bound on"].append(r["bounds"])
        table["model"].append(r["model"])
        table["bound"].append(fmt(r["bound"]))
        table["observed"].append(fmt(r["observed"]))
        table["slack"].append(fmt(r["slack"]) + (f" ({SLACKS[r['kind']]})" if r["kind"] in SLACKS else ""))
        table["level"].append(_level(r, pairs, pac, routes, hold))
        verdict = "certified" if r["certified"] else "not certified"
        table["verdict"].append(verdict + ("" if r["valid"] else " (heuristic bound)"))
        where = {k: v for k, v in (r.get("would_certify_at") or {}).items()}
        table["would certify at"].append(", ".join(f"{k} = {fmt(v) if v is not None else 'never'}"
                                                   for k, v in where.items()) if not r["certified"] else "")
    st.table(table)
    if hold.get("size", {}).get("cap"):
        st.caption(f"Hold-out sample: m = {hold['m']} fresh points, fixed before they were drawn: "
                   f"{hold['size']['rule']}" + ("; each point's loss averaged over its label distribution, "
                                                "E[l | x] (same mean, less variance)" if hold.get("label_averaged") else "")
                   + ". " + theory_link("8b-certificates-that-can-certify"))
    st.caption(f"Hold-out: empirical Bernstein on the paired differences over {hold['sample']}, each pair at "
               f"delta/3 = {fmt(hold['delta_each'])} (union bound: the three hold together at 1 - delta), "
               f"finite-sample; {hold['range_note']}. Slack is not one kind of number: for a hold-out pair it is "
               f"{SLACKS['hold-out paired']}, for PAC-Bayes {SLACKS['PAC-Bayes']}, for a route "
               f"{SLACKS['norm-based route']}; all in nats, so the smallest is marked, but it is not a comparison "
               f"of like with like.")
    if pac.get("available"):
        st.caption(f"PAC-Bayes: theta_old re-trained on the first half of S ({pac['n_a']} points), the new block's "
                   f"posterior N(phi_hat, sigma^2 I) on the second (n_b = {pac['n_b']}); prior N(phi0, sigma^2 I); "
                   f"sigma = {fmt(pac['sigma'])} from a grid of {len(pac['grid'])} (paid), KL = {fmt(pac['kl'])} nats; "
                   f"smoothed cross-entropy (alpha = {fmt(pac['alpha'])}, range {fmt(pac['loss_range'])}); "
                   f"bound {fmt(pac['bound'])} against log K = {fmt(pac['log_K'])}, at 1 - delta (delta/(2k) for each "
                   f"sigma's Monte Carlo and PAC-Bayes steps), finite-sample. A stochastic model, not the "
                   f"run's f_new. " + theory_link("8b-certificates-that-can-certify"))
    else:
        st.caption(f"PAC-Bayes route: {pac.get('note', 'not available')}.")


def _level(row: dict, pairs: dict, pac: dict, routes: dict, hold: dict) -> str:
    """The level a certificate row holds at, and whether it is finite-sample."""
    if row["kind"] == "hold-out paired":
        p = pairs.get(row["certifies"])
        return pair_level(p) if p else f"delta/3 = {fmt(hold['delta_each'])} each, finite-sample"
    if row["kind"] == "PAC-Bayes":
        return f"1 - delta = {fmt(1 - pac['delta'], digits=4) if pac.get('delta') else 'n/a'} (sigma grid paid), finite-sample"
    route = routes.get("A" if row["name"].startswith("route A") else "B") or {}
    return (f"{route['level']}, {route.get('guarantee', 'finite-sample')}" if route.get("level")
            else "1 - delta, finite-sample")
