"""GIF Explorer · Model & data: the entry page. Starts on the bundled default with no clicks."""

from __future__ import annotations

import streamlit as st

from app import charts, session, warmup
from app.gallery import show_grid
from gif_core.comparison import compare_predictions
from gif_core.workspace import open_workspace, open_workspace_path, resolve_local_checkpoint, resolve_local_folder
from gif_core.zoo import list_bundled

st.set_page_config(page_title="Model & data · GIF Explorer", layout="wide")
st.title("GIF Explorer")
st.caption(
    "What would this model be without some of its training data? Pick a model here, then browse influential "
    "samples, see which parameters an edit would move, and run what-if edits against classic influence functions "
    "and real retraining (pages on the left)."
)

with session.errors_shown():
    source = st.radio("Model source", ["Bundled", "Local path", "Upload"], horizontal=True, key="source")
    if source == "Bundled":
        names = [m.name for m in list_bundled()]
        descriptions = {m.name: m.description for m in list_bundled()}
        current = session.workspace()
        default = next((i for i, m in enumerate(list_bundled()) if current.source.endswith(m.filename)), 0)
        name = st.selectbox("Bundled model", names, index=default, key="bundled_name")
        st.caption(descriptions[name])
        if st.button("Load bundled model", key="load_bundled"):
            session.use_workspace(session.bundled_workspace(name), {"bundled": name})
    elif source == "Local path":
        path = st.text_input("Checkpoint path (.safetensors or .pt, with its .json card beside it)", key="local_path")
        root = st.text_input("Data folder (only for MNIST/CIFAR-10/SVHN/ImageFolder cards)", key="data_root")
        if st.button("Load from path", key="load_path"):
            if not path.strip():
                raise ValueError("Type the path of a checkpoint first.")
            weights = resolve_local_checkpoint(path.strip())  # only under the allowed folders; one message else
            data_root = resolve_local_folder(root.strip()) if root.strip() else None
            link = {"path": path.strip(), **({"data": root.strip()} if data_root else {})}
            session.use_workspace(open_workspace_path(weights, data_root), link)
    else:
        weights = st.file_uploader("Weights (.safetensors, or a .pt state dict)", type=["safetensors", "pt", "pth"])
        card = st.file_uploader("Model card (.json)", type=["json"])
        if st.button("Load upload", key="load_upload"):
            if weights is None or card is None:
                raise ValueError("Upload both the weights and the model card (.json) first.")
            session.use_workspace(
                open_workspace(weights.getvalue(), card.getvalue(), weights.name, f"upload:{weights.name}")
            )

with session.errors_shown():
    loaded = session.workspace()
    bundle = loaded.bundle
    st.markdown("Loaded: " + session.model_caption(loaded))
    warmup.show(warmup.start_default(loaded), "the What-if page's first question (remove the first class)")
    left, right = st.columns([1, 2])
    with left:
        st.subheader("Model card")
        st.json(loaded.card.to_dict(), expanded=False)
        st.metric("Training samples", len(loaded.train))
        if loaded.backdoor is not None:
            st.warning(
                f"This model was trained with a backdoor: {len(loaded.backdoor_request.indices)} poisoned training "
                f"images relabelled as class {loaded.backdoor.target}. Undo it on the What-if edit page."
            )
    with right:
        (predictions,) = compare_predictions({"this model": loaded.model}, bundle.test, bundle.num_classes)
        st.plotly_chart(charts.per_class_accuracy([predictions], bundle.classes), key="per_class")
    st.subheader("Samples")
    shown_class = st.selectbox("Show class", ["all", *bundle.classes], key="gallery_class")
    rows = range(len(loaded.train))
    if shown_class != "all":
        wanted = bundle.classes.index(shown_class)
        rows = [r for r in rows if int(loaded.train.labels[r]) == wanted]
    rows = list(rows)[:24]
    images = [loaded.train.images[r].numpy() if loaded.train.images is not None else None for r in rows]
    show_grid(images, [f"#{r} · {bundle.classes[int(loaded.train.labels[r])]}" for r in rows])
