"""peft-planner web app (first version): exact trainable parameters and adapter size for a catalog
model and a PEFT method. Imports only ``planner``; errors are shown next to the inputs.

Run with ``make run`` (http://localhost:8501). Memory charts, comparisons and export follow.
"""

from __future__ import annotations

import streamlit as st

import planner
from planner.format import human_bytes

DEFAULT_MODEL = "meta-llama/Llama-3.1-8B"
METHOD_CHOICES = ["lora", "qlora", "dora", "ia3", "prefix_tuning", "prompt_tuning", "p_tuning", "bitfit", "partial", "full"]

st.set_page_config(page_title="peft-planner", layout="wide")
st.title("peft-planner")
st.caption("Exact trainable parameters and adapter size, counted like PEFT itself.")

ids = planner.model_ids()
model_id = st.sidebar.selectbox("Model", ids, index=ids.index(DEFAULT_MODEL))
method = st.sidebar.selectbox("Method", METHOD_CHOICES)
options: dict = {}
spec = planner.load_model(model_id)
if method in ("lora", "qlora", "dora"):
    options["r"] = st.sidebar.number_input("Rank r", min_value=1, max_value=1024, value=16)
    names = [n for n in dict.fromkeys(m.leaf_name for m in spec.inventory if m.kind.value in ("linear", "conv1d")) if n != "lm_head"]
    all_linear = st.sidebar.checkbox("all-linear", value=False)
    picked = st.sidebar.multiselect("Target modules", names, default=names[:1], disabled=all_linear)
    options["target_modules"] = "all-linear" if all_linear else picked
elif method in ("prefix_tuning", "prompt_tuning", "p_tuning"):
    options["num_virtual_tokens"] = st.sidebar.number_input("Virtual tokens", min_value=1, max_value=512, value=20)
elif method == "partial":
    options["last_k_layers"] = st.sidebar.number_input("Last k layers", min_value=1, max_value=spec.num_layers, value=1)

st.subheader(model_id)
s = spec.summary()
st.write(f"{s['layers']} layers · hidden {s['hidden_size']} · heads {s['attention_heads']} / KV {s['kv_heads']} · "
         f"vocab {s['vocab_size']:,} · {s['total_params']:,} parameters")
try:
    plan = planner.estimate(model_id, method=method, **options)
except planner.PlannerError as exc:
    st.error(str(exc))
else:
    c1, c2, c3 = st.columns(3)
    c1.metric("Trainable parameters", f"{plan.trainable_params:,}")
    c2.metric("Trainable %", f"{plan.trainable_percent:.4f}%")
    c3.metric("Adapter file", human_bytes(plan.adapter_file_bytes))
    with st.expander(f"Adapted modules ({plan.num_adapted_modules})"):
        st.code("\n".join(plan.adapted_modules) or "(none)")
    for note in plan.notes:
        st.info(note)
