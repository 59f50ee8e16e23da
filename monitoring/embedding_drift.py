"""Face embeddings as drift columns: the champion's own backbone embedding of each image (an
output of its ONNX export, `ml.embedding`), reduced with a PCA fitted on the reference side.

Live traffic carries its embeddings in the prediction log; the reference embeddings are the
same model's embeddings of its training images. The components go into the Evidently report
as one embedding group (`monitoring.evidently_report.EMBEDDINGS`), which Evidently's model-based embedding drift scores:
a classifier tries to tell reference from current, and its ROC AUC is the drift score (0.5:
indistinguishable). A change in what the faces look like at equal brightness and size moves it.

scikit-learn and pandas are imported inside the functions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from monitoring.evidently_report import SEED

if TYPE_CHECKING:  # pragma: no cover
    import pandas


def component_columns(count: int) -> list[str]:
    return [f"face_pc{i}" for i in range(count)]


def with_components(
    current: pandas.DataFrame,
    reference: pandas.DataFrame,
    reference_embeddings: np.ndarray,
    components: int,
) -> tuple[pandas.DataFrame, pandas.DataFrame, tuple[str, ...]]:
    """Both tables with the PCA components of their embeddings as columns (the PCA fitted on
    the reference's): `current` has them in its ``embedding`` column (rows without one are left
    out), `reference_embeddings` is (len(reference), C), row for row. Returns the two tables
    and the component column names."""
    from sklearn.decomposition import PCA

    current = current[current["embedding"].notna()].reset_index(drop=True)
    live = np.stack(current["embedding"].to_list()).astype(np.float64)
    known = reference_embeddings.astype(np.float64)
    if live.shape[1] != known.shape[1]:
        raise ValueError(
            f"embeddings of live traffic have {live.shape[1]} values, the reference's "
            f"{known.shape[1]}: they come from different models"
        )
    count = min(components, known.shape[1], len(known) - 1)
    pca = PCA(n_components=count, random_state=SEED).fit(known)
    columns = tuple(component_columns(count))
    current = current.join(_frame(pca.transform(live), columns))
    reference = reference.reset_index(drop=True).join(_frame(pca.transform(known), columns))
    return current, reference, columns


def _frame(values: np.ndarray, columns: tuple[str, ...]) -> pandas.DataFrame:
    import pandas as pd

    return pd.DataFrame(values, columns=list(columns))
