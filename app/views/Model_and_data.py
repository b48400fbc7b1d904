"""GIF Explorer · Model & data: the entry page. Starts on the bundled default with no clicks."""

from __future__ import annotations

from pathlib import Path

import streamlit as st

from app import charts, session, warmup
from app.gallery import show_grid
from gif_core.comparison import compare_predictions
from gif_core.data import BUNDLED_DATASETS, class_mix
from gif_core.exported import EXPORTED_ARCH
from gif_core.model_card import CardForm, card_from_form
from gif_core.models import ARCHITECTURES, architecture_names
from gif_core.train import OPTIMIZERS, Recipe
from gif_core.workspace import open_workspace, open_workspace_path, resolve_local_checkpoint, resolve_local_folder
from gif_core.zoo import list_bundled

st.caption(
    "What would this model be without some of its training data? Pick a model here, then browse influential "
    "samples, see which parameters an edit would move, and run what-if edits against classic influence functions "
    "and real retraining (pages on the left)."
)

GALLERY_SIZE = 24
RECIPE = Recipe()


def written_card(download_name: str) -> str | None:
    """The form that writes a model card for weights that came without one: architecture, data set, split seed and
    training recipe in; the card (validated in gif_core) shown as JSON and offered as a download. Its JSON, or None
    while the form describes no valid card (the reason is shown in its place)."""
    st.markdown("**Write the model card**: what the uploaded weights are, so the model can be rebuilt around them.")
    left, middle, right = st.columns(3)
    names = (*architecture_names(), EXPORTED_ARCH)
    arch = left.selectbox(
        "Architecture",
        names,
        index=names.index("cnn"),
        key="card_arch",
        help=f"Ours ({', '.join(ARCHITECTURES)}) or any torchvision classification model by name, randomly "
        "initialised and adapted to small or greyscale images (repeated to 3 channels, resized up if too small); "
        f"{EXPORTED_ARCH!r} for a .pt2 exported program, whose graph is its architecture.",
    )
    dataset = middle.selectbox("Trained on", BUNDLED_DATASETS, key="card_dataset")
    split_seed = right.number_input(
        "Split seed",
        min_value=0,
        max_value=2**32 - 1,
        value=0,
        help="The seed that split the data set",
        key="card_seed",
    )
    recipe_known = st.checkbox(
        "I know how it was trained (needed to retrain it without the questioned data)", value=True, key="card_recipe"
    )
    with session.errors_shown():
        recipe = recipe_fields() if recipe_known else None
        notes = st.text_input("Notes (optional)", key="card_notes")
        text = card_from_form(CardForm(arch, dataset, int(split_seed), recipe, notes)).to_json()
        st.json(text, expanded=False)
        st.download_button(
            "Download the card (.json)", text, file_name=download_name, mime="application/json", key="card_download"
        )
        return text
    return None


def recipe_fields() -> Recipe:
    """The training recipe's fields, defaulting to gif_core's :class:`Recipe` defaults."""
    columns = st.columns(7)
    optimizer = columns[0].selectbox("Optimizer", OPTIMIZERS, index=OPTIMIZERS.index(RECIPE.optimizer), key="card_opt")
    lr = columns[1].number_input("Learning rate", value=RECIPE.lr, format="%g", key="card_lr")
    momentum = columns[2].number_input("Momentum (SGD)", value=RECIPE.momentum, format="%g", key="card_momentum")
    weight_decay = columns[3].number_input(
        "Weight decay", value=RECIPE.weight_decay, format="%g", help="The L2 term used in training", key="card_wd"
    )
    epochs = columns[4].number_input("Epochs", min_value=1, value=RECIPE.epochs, key="card_epochs")
    batch_size = columns[5].number_input("Batch size", min_value=1, value=RECIPE.batch_size, key="card_batch")
    seed = columns[6].number_input("Training seed", value=RECIPE.seed, key="card_train_seed")
    return Recipe(optimizer, float(lr), float(momentum), float(weight_decay), int(epochs), int(batch_size), int(seed))


def model_loader() -> None:
    """The model source (bundled, local path or upload) and its load button. A failed load is shown here as a
    message and the page goes on with the model loaded before."""
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
            path = st.text_input(
                "Checkpoint path (.safetensors, .pt or a .pt2 exported program, with its .json card beside it)",
                key="local_path",
            )
            root = st.text_input("Data folder (only for MNIST/CIFAR-10/SVHN/ImageFolder cards)", key="data_root")
            if st.button("Load from path", key="load_path"):
                if not path.strip():
                    raise ValueError("Type the path of a checkpoint first.")
                weights_path = resolve_local_checkpoint(
                    path.strip()
                )  # only under the allowed folders; one message else
                data_root = resolve_local_folder(root.strip()) if root.strip() else None
                link = {"path": path.strip(), **({"data": root.strip()} if data_root else {})}
                session.use_workspace(open_workspace_path(weights_path, data_root), link)
        else:
            weights = st.file_uploader(
                "Weights (.safetensors, a .pt state dict, also as {'state_dict': ...}, or a .pt2 from torch.export.save)",
                type=["safetensors", "pt", "pth", "pt2"],
                help="A .pt2 brings its own architecture (its graph of ATen operators); it is checked before it is "
                "read, and nothing in it is run but those operators. Export in eval mode with a dynamic batch "
                'dimension: torch.export.export(model.eval(), (x,), dynamic_shapes=({0: torch.export.Dim("batch")},))',
            )
            card = st.file_uploader("Model card (.json)", type=["json"])
            write = card is None and st.checkbox("No model card? Write one here", key="write_card")
            card_json: bytes | str | None = card.getvalue() if card is not None else None
            if write:
                card_json = written_card(
                    f"{Path(weights.name).stem}.json" if weights is not None else "model_card.json"
                )
            st.caption(
                "An uploaded model lives in this browser session only: a reload or a shared link cannot bring it back "
                "(they open the bundled default). To share a link, load the files by *Local path*."
            )
            if st.button("Load upload", key="load_upload"):
                if weights is None or card_json is None:
                    raise ValueError(
                        "Upload both the weights and the model card (.json) first, or write the card with the form."
                    )
                session.use_workspace(
                    open_workspace(weights.getvalue(), card_json, weights.name, f"upload:{weights.name}")
                )


model_loader()


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
        assert loaded.backdoor_request is not None  # a workspace sets both or neither
        st.warning(
            f"This model was trained with a backdoor: {len(loaded.backdoor_request.indices)} poisoned training "
            f"images relabelled as class {loaded.backdoor.target}. Undo it on the What-if edit page."
        )
with right:
    (predictions,) = compare_predictions({"this model": loaded.model}, bundle.test, bundle.num_classes)
    st.plotly_chart(charts.per_class_accuracy([predictions], bundle.classes), key="per_class")
st.subheader("Samples")
shown_class = st.selectbox("Show class", ["all (a mix of classes)", *bundle.classes], key="gallery_class")
if shown_class in bundle.classes:
    wanted = bundle.classes.index(shown_class)
    rows = [r for r in range(len(loaded.train)) if int(loaded.train.labels[r]) == wanted][:GALLERY_SIZE]
else:
    rows = class_mix(loaded.train.labels, GALLERY_SIZE)
images = [loaded.train.images[r].numpy() if loaded.train.images is not None else None for r in rows]
show_grid(images, [f"#{r} · {bundle.classes[int(loaded.train.labels[r])]}" for r in rows])
