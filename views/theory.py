"""Theory: THEORY.md, every quantity with its formula; the other pages link to its anchors."""
import re
from pathlib import Path

import streamlit as st

THEORY = Path(__file__).resolve().parents[1] / "THEORY.md"
HEADING = re.compile(r"^(#{1,3}) (.+?)(?: \{#([\w-]+)\})?$")

st.title("Theory")
text = THEORY.read_text()
for block in re.split(r"(\$\$.+?\$\$)", text, flags=re.S):
    if block.startswith("$$"):
        st.latex(block.strip("$").strip())
        continue
    buffer = []
    for line in block.splitlines():
        m = HEADING.match(line)
        if m and m.group(1) != "#":
            st.markdown("\n".join(buffer))
            buffer = []
            level, title, anchor = m.groups()
            (st.header if level == "##" else st.subheader)(title, anchor=anchor or None)
        elif not (m and m.group(1) == "#"):
            buffer.append(line)
    st.markdown("\n".join(buffer))
