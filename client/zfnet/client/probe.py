"""Linear probes per layer: how well a layer's features separate the classes of a new data set
(Zeiler & Fergus 2013, Sec. 5: the trained layers stay fixed, a linear classifier is trained on a
few images per class, accuracy is reported per layer; the paper used 15 or 30 training images per
class of Caltech-101 over 5 train/test folds and reported mean per-class accuracy).

For each fold, ``train_per_class`` images of every class are drawn with the seed for training and
up to ``test_per_class`` of the others for testing: the same split for every layer, and never one
image in both. Each layer is probed with scikit-learn: features standardised (and reduced by PCA
to ``max_dim`` dimensions when larger, both fit on the training split only), then
``LogisticRegression`` (L-BFGS, multinomial) with C chosen by stratified cross-validation on the
training split only (scikit-learn's ``LogisticRegressionCV``).
The raw pixels (the ``pixels`` features) are always probed as the baseline. Works on files: no
server needed.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from zfnet.client.features import FeatureSet, load
from zfnet.errors import InvalidArgument, NotFound
from zfnet.wire.features import PIXELS

CS = (1e-3, 1e-2, 1e-1, 1.0)  # the C values the inner cross-validation chooses from
MAX_ITER = 100  # L-BFGS iterations per C: bounded, so that 200 classes x 30 images stays tractable on a CPU
MAX_DIM = 256  # larger layers are reduced by PCA (fit on the training split) to this many dimensions


@dataclass(frozen=True)
class Split:
    """One fold: rows of the features folder used for training and for testing."""

    fold: int
    train: np.ndarray
    test: np.ndarray


def draw_splits(
    labels: np.ndarray, usable: np.ndarray, classes: Sequence[str], train_per_class: int, test_per_class: int, folds: int, seed: int,
) -> list[Split]:
    """Per class, ``train_per_class`` rows for training and up to ``test_per_class`` of the rest for
    testing, drawn for fold f with ``numpy.random.default_rng([seed, f])``, classes in label order.
    Rows where ``usable`` is False (skipped images, unknown labels) are never drawn."""
    if train_per_class < 1 or test_per_class < 1 or folds < 1:
        raise InvalidArgument("--train-per-class, --test-per-class and --folds must be at least 1")
    present = sorted(set(labels[usable & (labels >= 0)].tolist()))
    if not present:
        raise InvalidArgument("the features have no labelled rows to probe (every label is -1)")
    members = {c: np.flatnonzero(usable & (labels == c)) for c in present}
    short = [(classes[c] if c < len(classes) else str(c), len(rows)) for c, rows in members.items() if len(rows) <= train_per_class]
    if short:
        name, count = min(short, key=lambda item: item[1])
        raise InvalidArgument(
            f"--train-per-class {train_per_class} leaves no test image in {len(short)} class(es): class {name!r} has {count} image(s); "
            f"use at most {count - 1}"
        )
    out = []
    for fold in range(folds):
        rng = np.random.default_rng([seed, fold])
        train, test = [], []
        for c in present:
            order = rng.permutation(members[c])
            train.append(order[:train_per_class])
            test.append(order[train_per_class : train_per_class + test_per_class])
        out.append(Split(fold, np.concatenate(train), np.concatenate(test)))
    return out


def fit_predict(
    x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, cs: Sequence[float] = CS, cv: int = 3, seed: int = 0,
    max_dim: int = MAX_DIM, max_iter: int = MAX_ITER,
) -> tuple[np.ndarray, float, int]:
    """Predictions for ``x_test``, the C chosen and the dimensions used. Features are standardised,
    and reduced by PCA to ``max_dim`` (or to the number of training images, if fewer) when larger,
    with statistics of the training split; then ``LogisticRegressionCV`` takes the C of ``cs`` with
    the best mean accuracy over ``cv`` stratified folds of the training split (a warm-started path
    over C per fold) and refits on the whole training split. Runs on one thread: OpenMP and BLAS
    threads spin badly on a shared CPU, and the fits are many and small."""
    from sklearn.decomposition import PCA
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1), warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)  # max_iter bounds the fits on purpose
        scaler = StandardScaler().fit(x_train)
        # sklearn has no type hints; pyright infers the results of transform (str among them) and the parameter
        # types of LogisticRegressionCV (Cs: int, l1_ratios: str, from their defaults) from its code
        x_train, x_test = scaler.transform(x_train), scaler.transform(x_test)  # pyright: ignore[reportAssignmentType]
        if x_train.shape[1] > max_dim:
            pca = PCA(min(max_dim, len(x_train)), svd_solver="randomized", random_state=seed).fit(x_train)
            x_train, x_test = pca.transform(x_train), pca.transform(x_test)
        model = LogisticRegressionCV(
            Cs=list(cs), l1_ratios=(0.0,), cv=StratifiedKFold(cv, shuffle=True, random_state=seed), scoring="accuracy",  # pyright: ignore[reportArgumentType]
            max_iter=max_iter, use_legacy_attributes=False,  # pyright: ignore[reportArgumentType]
        ).fit(x_train, y_train)
        return model.predict(x_test), float(np.ravel(model.C_)[0]), x_train.shape[1]


def per_class_accuracy(truth: np.ndarray, predicted: np.ndarray, n_classes: int) -> np.ndarray:
    """(n_classes,) accuracy on each class's test images; NaN for a class without any."""
    correct = np.bincount(truth, weights=truth == predicted, minlength=n_classes)
    count = np.bincount(truth, minlength=n_classes)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, correct / np.maximum(count, 1), np.nan)


@dataclass
class LayerResult:
    """One layer's probe over the folds."""

    name: str
    number: int | None
    pooling: str
    dim: int  # values per image as stored
    used_dim: int  # after PCA (== dim when none)
    accuracy: list[float]  # per fold: mean per-class accuracy on the test split
    c: list[float]  # per fold: the C chosen
    per_class: list[float]  # per class: accuracy averaged over folds (NaN: class not probed)

    @property
    def mean(self) -> float:
        return float(np.mean(self.accuracy))

    @property
    def std(self) -> float:
        return float(np.std(self.accuracy))


@dataclass
class ProbeResult:
    """Every probed layer of one features folder (the raw pixels first), and how it was probed."""

    folder: str
    model: str
    data: str  # the data set's name, or the last two parts of a local folder's path
    classes: list[str]
    probed_classes: int
    train_per_class: int
    test_per_class: int
    folds: int
    seed: int
    cv: int
    cs: list[float]
    max_dim: int
    max_iter: int
    layers: list[LayerResult]
    splits: list[dict] = field(default_factory=list)  # per fold: data-set indices of train and test images

    @property
    def pixels(self) -> LayerResult:
        return next(r for r in self.layers if r.name == PIXELS)

    def to_dict(self) -> dict:
        out = asdict(self)
        for row, layer in zip(out["layers"], self.layers):
            row.update(mean=layer.mean, std=layer.std)
            row["per_class"] = {c: (None if np.isnan(a) else a) for c, a in zip(self.classes, layer.per_class)}
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict) -> ProbeResult:
        """Back from :meth:`to_dict` (e.g. ``zfclient probe --json`` output), to plot or compare saved probes."""
        fields = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        classes = data["classes"]
        fields["layers"] = [
            LayerResult(**{
                **{k: v for k, v in row.items() if k in LayerResult.__dataclass_fields__},
                "per_class": [np.nan if row["per_class"].get(c) is None else row["per_class"][c] for c in classes],
            })
            for row in data["layers"]
        ]
        return cls(**fields)


def run(
    features: str | Path | FeatureSet, layers: Sequence[str | int] | None = None, train_per_class: int = 30, test_per_class: int = 50,
    folds: int = 5, seed: int = 0, cv: int = 3, cs: Sequence[float] = CS, max_dim: int = MAX_DIM, max_iter: int = MAX_ITER,
    jobs: int = 1, on_step: Callable[[str, int], None] | None = None,
) -> ProbeResult:
    """Probe every layer of a features folder (or ``layers``: names or numbers), raw pixels first,
    with ``jobs`` fits in parallel processes (each fit runs on one thread). ``on_step(layer, fold)``
    is called after each fit."""
    from joblib import Parallel, delayed

    fs = features if isinstance(features, FeatureSet) else load(features)
    if not fs.classes:
        raise InvalidArgument(
            f"probe needs labelled images: the features in {fs.folder} come from a flat folder (no class folders); "
            "compute them with `zfclient features --data DIR` over a labelled tree DIR/<class>/<image>"
        )
    chosen = _choose(fs, layers)
    if cv < 2:
        raise InvalidArgument("--cv must be at least 2 (folds of the training split that choose C)")
    if train_per_class < cv:
        raise InvalidArgument(f"--train-per-class {train_per_class} is too few for {cv}-fold cross-validation of C; use at least {cv}")
    if jobs < 1:
        raise InvalidArgument("--jobs must be at least 1")
    usable = np.ones(len(fs.labels), bool)
    usable[fs.skipped_rows] = False
    splits = draw_splits(fs.labels, usable, fs.classes, train_per_class, test_per_class, folds, seed)
    n_classes = max(len(fs.classes), int(fs.labels.max()) + 1)
    tasks = [(layer, split) for layer in chosen for split in splits]

    def fit(layer: dict, split: Split):
        values = fs.arrays[layer["name"]]
        x_train, x_test = np.asarray(values[split.train], np.float32), np.asarray(values[split.test], np.float32)
        return delayed(fit_predict)(x_train, fs.labels[split.train], x_test, cs, cv, seed, max_dim, max_iter)

    fitted: dict[str, list[tuple[np.ndarray, float, int]]] = {layer["name"]: [] for layer in chosen}
    # joblib has no type hints: pyright infers items that may be None from its code; they are fit_predict's results
    outputs: Iterable[tuple[np.ndarray, float, int]] = Parallel(n_jobs=jobs, return_as="generator")(fit(layer, split) for layer, split in tasks)  # pyright: ignore[reportAssignmentType]
    for (layer, split), (predicted, c, used_dim) in zip(tasks, outputs):
        fitted[layer["name"]].append((per_class_accuracy(fs.labels[split.test], predicted, n_classes), c, used_dim))
        if on_step:
            on_step(layer["name"], split.fold)
    results = []
    for layer in chosen:
        per_class = np.stack([scores for scores, _, _ in fitted[layer["name"]]])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # classes never probed stay NaN
            mean_per_class = np.nanmean(per_class, axis=0)
        results.append(LayerResult(
            layer["name"], layer["number"], layer["pooling"], layer["size"], fitted[layer["name"]][0][2],
            [float(np.nanmean(scores)) for scores in per_class], [c for _, c, _ in fitted[layer["name"]]], mean_per_class.tolist(),
        ))
    start = fs.index["start"]
    data = fs.index["data"]["name"]
    return ProbeResult(
        str(fs.folder), fs.index.get("model_name") or fs.index["model_sha256"][:12],
        "/".join(Path(data).parts[-2:]) if fs.index["data"]["streamed"] else data, fs.classes,
        len(set(fs.labels[splits[0].train].tolist())), train_per_class, test_per_class, folds, seed, cv, list(cs), max_dim, max_iter,
        results, [{"fold": s.fold, "train": (s.train + start).tolist(), "test": (s.test + start).tolist()} for s in splits],
    )


def _choose(fs: FeatureSet, layers: Sequence[str | int] | None) -> list[dict]:
    """The raw pixels first, then the asked layers (by name or number) in the folder's order."""
    by_name = {layer["name"]: layer for layer in fs.layers}
    if PIXELS not in by_name:
        raise NotFound(f"{fs.folder} has no raw-pixel features ('{PIXELS}'), the probe's baseline; extract them with `zfclient features`")
    if not layers:
        names = [layer["name"] for layer in fs.layers if layer["name"] != PIXELS]
    else:
        names = []
        for asked in map(str, layers):
            match = [layer["name"] for layer in fs.layers if layer["name"] == asked or str(layer["number"]) == asked]
            if not match:
                known = ", ".join(f"{x['name']} ({x['number']})" if x["number"] else x["name"] for x in fs.layers)
                raise NotFound(f"no layer {asked!r} in {fs.folder}; it holds {known}")
            names += [n for n in match if n != PIXELS and n not in names]
    return [by_name[PIXELS]] + [by_name[n] for n in names]
